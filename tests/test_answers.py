"""The answer parser on real-looking model outputs."""

from __future__ import annotations

import json

import pytest

from geolocsft.answers import parse_answer
from geolocsft.testing.standin import caption_for

CAPTION = json.dumps(caption_for(48.8566, 2.3522))


@pytest.mark.parametrize(
    ("text", "lat", "lon", "status"),
    [
        (CAPTION, 48.8566, 2.3522, "json"),
        (
            f"Here is my analysis.\n```json\n{CAPTION}\n```\nHope this helps.",
            48.8566,
            2.3522,
            "json",
        ),
        (CAPTION[: CAPTION.index('"region": "stand-in') + 5], 48.8566, 2.3522, "json_partial"),
        (
            '{"answer": {"coordinates": {"latitude": -33.86, "longitude": 151.2',
            -33.86,
            151.2,
            "json_partial",
        ),
        ("<answer>lat: 35.6762, lon: 139.6503</answer>", 35.6762, 139.6503, "answer_tag"),
        ("Thinking... <answer>Latitude = -22.9 Longitude = -43.2", -22.9, -43.2, "answer_tag"),
        ("I believe this is Rome: latitude 41.9 N, longitude 12.5 E.", 41.9, 12.5, "hemisphere"),
        ('{"lat": 40.4168, "lng": -3.7038}', 40.4168, -3.7038, "json"),
        ("Coordinates: 33°51'54\"S 151°12'34\"E", -33.865, 151.20944, "dms"),
        (
            "The photo was taken near 64.1466 N, 21.9426 W (Reykjavik).",
            64.1466,
            -21.9426,
            "hemisphere",
        ),
        ("lat: 51.5, lon: -0.12", 51.5, -0.12, "text"),
    ],
)
def test_formats_models_really_write(text, lat, lon, status):
    parsed = parse_answer(text)
    assert parsed.status == status
    assert parsed.lat == pytest.approx(lat, abs=1e-4)
    assert parsed.lon == pytest.approx(lon, abs=1e-4)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "I cannot determine the location of this image.",
        '{"answer": {"coordinates": {"latitude": 123.0, "longitude": 10.0}}}',
        "<answer>lat: 91, lon: 200</answer>",
        '{"thinking": {"regional_analysis_25km": {"terrain": "hills',
        "The year 1999 saw 42 cars.",
    ],
)
def test_unusable_answers_give_no_coordinates(text):
    parsed = parse_answer(text)
    assert (parsed.lat, parsed.lon, parsed.status) == (None, None, "unparseable")
