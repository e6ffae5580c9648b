"""Read coordinates out of a model's free-form answer.

Models answer in many shapes; this parser accepts, in order of trust:

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

NUMBER = r"[-+]?\d{1,3}(?:\.\d+)?"


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


def parse_answer(text: str | None) -> ParsedAnswer:
    """The coordinates in a model's answer (see the module docstring for the formats)."""
    if not text or not text.strip():
        return UNPARSEABLE
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
