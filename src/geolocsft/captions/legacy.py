"""Captions of this project's first schema (``geocaption-1``), read as the paper's format.

``geocaption-1`` differed from the GeoLocSFT paper's format in 13 field names, three of which
were plain texts where the paper has objects. Answers of that schema that were paid for stay
usable: a stored ``geocaption-1`` answer is upgraded when the current key has none (no request),
and a ``geocaption-1`` caption file is upgraded when it is read. The renames (old path -> the
paper's path):

============================================  ======================================================
geocaption-1                                  paper (geocaption-2)
============================================  ======================================================
thinking.regional_analysis_25km               thinking.25km_analysis
...regional_analysis_25km.terrain             ...25km_analysis.terrain_characteristics
...regional_analysis_25km.climate             ...25km_analysis.climate_features
thinking.local_analysis_1km                   thinking.1km_analysis
...road_engineering.surface                   ...road_engineering.surface_materials
...road_engineering.markings                  ...road_engineering.line_markings
...vegetation.species                         ...vegetation.tree_species
...vegetation.undergrowth                     ...vegetation.herbaceous_plants
...vegetation.management                      ...vegetation.vegetation_management
thinking.buildings_and_infrastructure (text)  thinking.buildings_infrastructure.architectural_styles
thinking.vehicles_and_traffic (text)          thinking.vehicles_traffic.vehicle_types
thinking.terrain_and_soil (text)              thinking.terrain_soil.terrain_details
...elimination_similar_regions[].region       ...elimination_similar_regions[].eliminated_region
============================================  ======================================================

A text of the old schema goes into the first field of the paper's object; its other fields
(``municipal_facilities``, ``transportation_facilities``, ``traffic_patterns``,
``soil_characteristics``) are empty strings, since the old answer never separated them.
"""

from __future__ import annotations

from typing import Any

LEGACY_SCHEMA_VERSION = "geocaption-1"


def upgrade_caption(caption: dict[str, Any]) -> dict[str, Any]:
    """A ``geocaption-1`` caption (JSON data) in the paper's field names."""
    thinking = caption.get("thinking")
    if thinking is None:
        return {"thinking": None, "answer": caption["answer"]}
    regional = thinking["regional_analysis_25km"]
    local = thinking["local_analysis_1km"]
    road = local["road_engineering"]
    plants = local["vegetation"]
    return {
        "thinking": {
            "25km_analysis": {
                "terrain_characteristics": regional["terrain"],
                "climate_features": regional["climate"],
                "regional_development": regional["regional_development"],
            },
            "1km_analysis": {
                "road_engineering": {
                    "surface_materials": road["surface"],
                    "line_markings": road["markings"],
                    "guardrails": road["guardrails"],
                    "lighting": road["lighting"],
                    "drainage": road["drainage"],
                },
                "vegetation": {
                    "tree_species": plants["species"],
                    "herbaceous_plants": plants["undergrowth"],
                    "vegetation_management": plants["management"],
                },
            },
            "buildings_infrastructure": {
                "architectural_styles": thinking["buildings_and_infrastructure"],
                "municipal_facilities": "",
                "transportation_facilities": "",
            },
            "vehicles_traffic": {
                "vehicle_types": thinking["vehicles_and_traffic"],
                "traffic_patterns": "",
            },
            "terrain_soil": {
                "terrain_details": thinking["terrain_and_soil"],
                "soil_characteristics": "",
            },
            "elimination_similar_regions": [
                {"eliminated_region": e["region"], "reasons": e["reasons"]}
                for e in thinking["elimination_similar_regions"]
            ],
        },
        "answer": caption["answer"],
    }
