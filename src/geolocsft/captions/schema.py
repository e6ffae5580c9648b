"""The geo-caption, defined once as typed models (pydantic), in the GeoLocSFT paper's format.

The field names are the paper's own (those its captioning script asks Gemini for), so captions
made with the paper's script can be imported (``geolocsft captions import``) and ours can be
compared with theirs. ``thinking`` holds the expert's analysis at ~25 km scale (terrain, climate,
regional development) and ~1 km scale (road engineering, vegetation), buildings and
infrastructure, vehicles and traffic, terrain and soil, and the similar regions ruled out with
reasons; ``answer`` holds the coordinates and the final confirmation. The same models give the
JSON schema sent to the API (structured output) and validate every answer before it is written
as a caption. Captions of the earlier schema (``geocaption-1``) are upgraded on reading
(:mod:`geolocsft.captions.legacy`).

Two of the paper's keys start with a digit (``25km_analysis``, ``1km_analysis``); their Python
attributes are ``analysis_25km`` and ``analysis_1km``, and every dump uses the paper's names.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Bumped whenever the models below change shape; stored in every caption file and part of every
#: response's store key. ``geocaption-1`` was this project's first format (see ``legacy``).
CAPTION_SCHEMA_VERSION = "geocaption-2"


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_by_alias=True, validate_by_name=False, serialize_by_alias=True
    )


class RegionalAnalysis(_Strict):
    """What the photo says about its region (about 25 km around)."""

    terrain_characteristics: str = Field(
        description="Landforms, relief, geology, water bodies within about 25 km."
    )
    climate_features: str = Field(
        description="Climate zone, seasonal indicators, weather, as shown by sky and vegetation."
    )
    regional_development: str = Field(
        description="Settlement pattern, land use, infrastructure networks, development."
    )


class RoadEngineering(_Strict):
    """Road details at ~1 km scale."""

    surface_materials: str = Field(description="Pavement type, texture, colour, wear, patching.")
    line_markings: str = Field(description="Line width, colour, pattern, material, standard.")
    guardrails: str = Field(description="Barrier design, material, height, posts.")
    lighting: str = Field(description="Pole design, height, spacing, lamp type.")
    drainage: str = Field(description="Kerbs, gutters, ditches, cross-section, climate adaptation.")


class Vegetation(_Strict):
    """Plants at ~1 km scale."""

    tree_species: str = Field(description="Identifiable trees (scientific names where possible).")
    herbaceous_plants: str = Field(description="Undergrowth and ground cover; seasonal state.")
    vegetation_management: str = Field(description="Pruning, mowing, planting patterns.")


class LocalAnalysis(_Strict):
    """What the photo says about its surroundings (about 1 km around)."""

    road_engineering: RoadEngineering
    vegetation: Vegetation


class BuildingsInfrastructure(_Strict):
    """Buildings and public infrastructure."""

    architectural_styles: str = Field(description="Building design, materials, roofs.")
    municipal_facilities: str = Field(description="Public infrastructure, signage, furniture.")
    transportation_facilities: str = Field(description="Transit stops, pedestrian facilities.")


class VehiclesTraffic(_Strict):
    """Vehicles and how traffic behaves."""

    vehicle_types: str = Field(description="Common makes and models, plates, adaptations.")
    traffic_patterns: str = Field(description="Driving side, conventions, traffic volume.")


class TerrainSoil(_Strict):
    """Terrain and soil close up."""

    terrain_details: str = Field(description="Micro-topography, slopes, erosion.")
    soil_characteristics: str = Field(description="Soil colour, texture, composition.")


class EliminatedRegion(_Strict):
    """A similar-looking region and why it is ruled out."""

    eliminated_region: str
    reasons: list[str]


class Thinking(_Strict):
    """The reasoning that leads to the answer."""

    analysis_25km: RegionalAnalysis = Field(alias="25km_analysis")
    analysis_1km: LocalAnalysis = Field(alias="1km_analysis")
    buildings_infrastructure: BuildingsInfrastructure
    vehicles_traffic: VehiclesTraffic
    terrain_soil: TerrainSoil
    elimination_similar_regions: list[EliminatedRegion]


class Coordinates(_Strict):
    """The answer's point and the named region it lies in."""

    latitude: float = Field(ge=-90.0, le=90.0, description="Decimal degrees, north positive.")
    longitude: float = Field(ge=-180.0, le=180.0, description="Decimal degrees, east positive.")
    region: str = Field(description="Country, admin region and nearest place.")


class FinalLocationConfirmation(_Strict):
    """Why the answer is right and how precise it is."""

    confirmed_location: str
    decisive_features: list[str]
    accuracy_assessment: str


class Answer(_Strict):
    """Where the photo was taken."""

    coordinates: Coordinates
    final_location_confirmation: FinalLocationConfirmation


class GeoCaption(_Strict):
    """One geo-caption. ``thinking`` is null only in the answer-only ('metadata') ablation."""

    thinking: Thinking | None
    answer: Answer


class ModelGeoCaption(_Strict):
    """What a vision model must return: a geo-caption whose reasoning is present."""

    thinking: Thinking
    answer: Answer


def caption_json(caption: GeoCaption) -> dict[str, Any]:
    """The caption as JSON data, in the paper's field names and order."""
    return caption.model_dump(mode="json", by_alias=True)


def response_json_schema() -> dict[str, Any]:
    """The JSON schema of a model's answer, inlined (no ``$ref``) for structured-output APIs."""
    schema = ModelGeoCaption.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def response_schema_text() -> str:
    """The schema as compact JSON text, for prompts of backends without structured output."""
    return json.dumps(response_json_schema(), separators=(",", ":"))
