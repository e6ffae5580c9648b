"""Read coordinates out of a model's answer.

What is accepted depends on what the model was trained (or asked) to write, ``expect``:

``caption``
    A fine-tuned run whose target is a geo-caption JSON (``full``: reasoning then answer, or
    ``answer``): the coordinates are read from ``answer.coordinates`` only (the JSON keys as the
    caption schema names them), from the whole JSON or, when the answer was cut off after the
    coordinates, from the ``"answer": {"coordinates": {...}`` block. Nothing else counts: a
    reasoning text that mentions "Route 9 W, close to exit 12 N" is not an answer.
``coordinates``
    A run whose target is ``{"latitude": ..., "longitude": ...}``: those two keys of the
    top-level JSON object (or of its cut-off text), nothing else.
``any``
    A model not trained on our format (zero-shot API models): in order of trust

1. the geo-caption JSON's ``answer.coordinates`` (also inside markdown fences, after prose,
   or in JSON cut off after the coordinates were written);
2. the seed's baseline format ``<answer>lat: 48.85, lon: 2.35</answer>``;
3. labelled pairs such as ``latitude: 48.85 longitude: 2.35`` or ``"lat": 48.85, "lng": 2.35``;
4. degrees-minutes-seconds (``48°51'24"N 2°21'03"E``) and decimal degrees with hemisphere
   letters (``48.857 N, 2.352 E``).

Every result says how it was found (``status``); an answer with no usable coordinates gives
``status="unparseable"`` and no coordinates, never an exception, so a prediction row is kept
and counted as a miss.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from geolocsft.captions.schema import Answer, Coordinates, GeoCaption

NUMBER = r"[-+]?\d{1,3}(?:\.\d+)?"
#: What a model was trained (or asked) to write; see the module docstring.
AnswerFormat = Literal["caption", "coordinates", "any"]


def json_key(model: type[BaseModel], name: str) -> str:
    """The key a caption field has in JSON (its alias when the schema gives one)."""
    info = model.model_fields[name]
    return info.serialization_alias or info.alias or name


#: ``answer``, ``coordinates``, ``latitude`` and ``longitude`` as a caption's JSON names them.
ANSWER_KEY = json_key(GeoCaption, "answer")
COORDINATES_KEY = json_key(Answer, "coordinates")
LATITUDE_KEY = json_key(Coordinates, "latitude")
LONGITUDE_KEY = json_key(Coordinates, "longitude")


@dataclass(frozen=True)
class ParsedAnswer:
    """Coordinates found in an answer, or ``None`` with ``status="unparseable"``."""

    lat: float | None
    lon: float | None
    status: str


UNPARSEABLE = ParsedAnswer(None, None, "unparseable")


def _valid(lat: float, lon: float) -> bool:
    return -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0


def _from_json_value(value: object) -> tuple[float, float] | None:
    """Coordinates from a decoded caption (or a bare coordinates object)."""
    if not isinstance(value, dict):
        return None
    for path in (("answer", "coordinates"), ("coordinates",), ("answer",), ()):
        node: object = value
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            lat = next((node[k] for k in ("latitude", "lat") if k in node), None)
            lon = next((node[k] for k in ("longitude", "lon", "lng") if k in node), None)
            try:
                if lat is not None and lon is not None and _valid(float(lat), float(lon)):
                    return float(lat), float(lon)
            except (TypeError, ValueError):
                return None
    return None


def _json_candidates(text: str) -> list[str]:
    fenced = re.findall(r"```(?:json)?\s*(.*?)(?:```|$)", text, flags=re.DOTALL)
    start = text.find("{")
    return [*fenced, text[start:] if start >= 0 else ""]


_COORDINATE_BLOCK = re.compile(
    r'"coordinates"\s*:\s*\{(?P<body>[^{}]*)\}?', flags=re.DOTALL | re.IGNORECASE
)
_LABELLED = re.compile(
    rf"""["']?\b(?:lat|latitude)\b["']?\s*[:=]\s*(?P<lat>{NUMBER})\s*°?\s*(?P<lat_h>[NS])?\b
    [^0-9+-]{{0,40}}?
    ["']?\b(?:lon|lng|long|longitude)\b["']?\s*[:=]\s*(?P<lon>{NUMBER})\s*°?\s*(?P<lon_h>[EW])?""",
    flags=re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
_DMS = re.compile(
    r"""(?P<d>\d{1,3})\s*[°º:\s]\s*(?P<m>\d{1,2}(?:\.\d+)?)\s*['′:\s]\s*
    (?:(?P<s>\d{1,2}(?:\.\d+)?)\s*(?:["″]|'')?)?\s*(?P<h>[NSEW])\b""",
    flags=re.VERBOSE | re.IGNORECASE,
)
_HEMISPHERE = re.compile(rf"(?P<v>{NUMBER})\s*°?\s*(?P<h>[NSEW])\b", flags=re.IGNORECASE)


def _signed(value: float, hemisphere: str | None) -> float:
    return -abs(value) if hemisphere and hemisphere.upper() in "SW" else value


def _pairs_with_hemispheres(values: list[tuple[float, str]]) -> tuple[float, float] | None:
    lat = next((v for v, h in values if h.upper() in "NS"), None)
    lon = next((v for v, h in values if h.upper() in "EW"), None)
    if lat is not None and lon is not None and _valid(lat, lon):
        return lat, lon
    return None


def _point(node: object, lat_key: str, lon_key: str) -> tuple[float, float] | None:
    """``node[lat_key], node[lon_key]`` as a valid point, or None."""
    if not isinstance(node, dict) or lat_key not in node or lon_key not in node:
        return None
    try:
        lat, lon = float(node[lat_key]), float(node[lon_key])
    except (TypeError, ValueError):
        return None
    return (lat, lon) if _valid(lat, lon) else None


def _decoded(text: str) -> list[object]:
    """Every JSON value the answer holds whole (fenced blocks, or from its first brace)."""
    values = []
    for candidate in _json_candidates(text):
        try:
            values.append(json.loads(candidate))
        except json.JSONDecodeError:
            continue
    return values


_CAPTION_ANSWER = re.compile(
    rf'"{re.escape(ANSWER_KEY)}"\s*:\s*\{{\s*"{re.escape(COORDINATES_KEY)}"\s*:\s*'
    r"\{(?P<body>[^{}]*)\}?",
    flags=re.DOTALL,
)


def _parse_caption(text: str) -> ParsedAnswer:
    """``answer.coordinates`` of a geo-caption JSON, whole or cut off after the coordinates."""
    for value in _decoded(text):
        answer = value.get(ANSWER_KEY) if isinstance(value, dict) else None
        coordinates = answer.get(COORDINATES_KEY) if isinstance(answer, dict) else None
        if found := _point(coordinates, LATITUDE_KEY, LONGITUDE_KEY):
            return ParsedAnswer(*found, "json")
    # A cut-off or slightly broken JSON: the last answer block that holds coordinates.
    for block in reversed(list(_CAPTION_ANSWER.finditer(text))):
        found = _point(_loose_object(block.group("body")), LATITUDE_KEY, LONGITUDE_KEY)
        if found:
            return ParsedAnswer(*found, "json_partial")
    return UNPARSEABLE


def _parse_coordinates(text: str) -> ParsedAnswer:
    """``{"latitude": .., "longitude": ..}`` (top-level keys), whole or cut off after them."""
    for value in _decoded(text):
        if found := _point(value, "latitude", "longitude"):
            return ParsedAnswer(*found, "json")
    start = text.find("{")
    if start >= 0 and "{" not in text[start + 1 :]:
        found = _point(_loose_object(text[start + 1 :]), "latitude", "longitude")
        if found:
            return ParsedAnswer(*found, "json_partial")
    return UNPARSEABLE


def parse_answer(text: str | None, expect: AnswerFormat = "any") -> ParsedAnswer:
    """The coordinates in a model's answer (see the module docstring for ``expect``)."""
    if not text or not text.strip():
        return UNPARSEABLE
    if expect == "caption":
        return _parse_caption(text)
    if expect == "coordinates":
        return _parse_coordinates(text)
    for candidate in _json_candidates(text):
        try:
            found = _from_json_value(json.loads(candidate))
        except json.JSONDecodeError:
            continue
        if found:
            return ParsedAnswer(*found, "json")
    block = _COORDINATE_BLOCK.search(text)
    if block:
        found = _from_json_value(_loose_object(block.group("body")))
        if found:
            return ParsedAnswer(*found, "json_partial")
    answer_tag = re.search(r"<answer>(.*?)(?:</answer>|$)", text, flags=re.DOTALL | re.IGNORECASE)
    scopes = [("answer_tag", answer_tag.group(1))] if answer_tag else []
    scopes.append(("text", text))
    for status, scope in scopes:
        labelled = _LABELLED.search(scope)
        if labelled:
            lat = _signed(float(labelled.group("lat")), labelled.group("lat_h"))
            lon = _signed(float(labelled.group("lon")), labelled.group("lon_h"))
            if _valid(lat, lon):
                return ParsedAnswer(lat, lon, status)
        dms = [
            (
                _signed(
                    float(m.group("d"))
                    + float(m.group("m")) / 60
                    + float(m.group("s") or 0) / 3600,
                    m.group("h"),
                ),
                m.group("h"),
            )
            for m in _DMS.finditer(scope)
        ]
        if found := _pairs_with_hemispheres(dms):
            return ParsedAnswer(*found, "dms")
        decimal = [
            (_signed(float(m.group("v")), m.group("h")), m.group("h"))
            for m in _HEMISPHERE.finditer(scope)
        ]
        if found := _pairs_with_hemispheres(decimal):
            return ParsedAnswer(*found, "hemisphere")
    return UNPARSEABLE


def _loose_object(body: str) -> dict[str, str]:
    """``"latitude": 1.5, "longitude": 2`` (possibly cut off) as a dict of strings."""
    pairs = re.findall(rf'"(\w+)"\s*:\s*({NUMBER})(?=\s*[,}}\n]|\s*$)', body)
    return dict(pairs)
