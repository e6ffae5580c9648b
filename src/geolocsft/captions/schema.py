"""The geo-caption, defined once as typed models (pydantic), versioned.

Structure after GeoLocSFT: ``thinking`` holds the expert's analysis at ~25 km scale (terrain,
climate, regional development) and ~1 km scale (road engineering, vegetation), buildings,
vehicles, terrain and soil, and the similar regions ruled out with reasons; ``answer`` holds the
coordinates and the final confirmation. The same models give the JSON schema sent to the API
(structured output) and validate every answer before it is written as a caption.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Bumped whenever the models below change shape; stored in every caption file.
CAPTION_SCHEMA_VERSION = "geocaption-1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegionalAnalysis(_Strict):
    """What the photo says at ~25 km scale."""

    terrain: str = Field(description="Landforms, relief, water bodies visible or implied.")
    climate: str = Field(description="Climate zone as shown by sky, vegetation, snow, dryness.")
    regional_development: str = Field(
        description="Settlement pattern, land use, economic development of the region."
    )


class RoadEngineering(_Strict):
    """Road details at ~1 km scale."""

    surface: str = Field(description="Asphalt, concrete, gravel, cobbles; condition.")
    markings: str = Field(description="Centre and edge line colours and patterns.")
    guardrails: str = Field(description="Barrier types and posts.")
    lighting: str = Field(description="Street lamps and poles.")
    drainage: str = Field(description="Kerbs, gutters, ditches.")


class Vegetation(_Strict):
    """Plants at ~1 km scale."""

    species: str = Field(description="Identifiable trees, crops, plants.")
    undergrowth: str = Field(description="Ground cover and shrubs.")
    management: str = Field(description="Mowing, hedges, plantations, wild growth.")


class LocalAnalysis(_Strict):
    """What the photo says at ~1 km scale."""

    road_engineering: RoadEngineering
    vegetation: Vegetation


class EliminatedRegion(_Strict):
    """A similar-looking region and why it is ruled out."""

    region: str
    reasons: list[str]


class Thinking(_Strict):
    """The reasoning that leads to the answer."""

    regional_analysis_25km: RegionalAnalysis
    local_analysis_1km: LocalAnalysis
    buildings_and_infrastructure: str
    vehicles_and_traffic: str
    terrain_and_soil: str
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


def response_json_schema() -> dict[str, Any]:
    """The JSON schema of a model's answer, inlined (no ``$ref``) for structured-output APIs."""
    schema = ModelGeoCaption.model_json_schema()
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
