"""Zero-shot baselines: a base model behind an API answers where each benchmark photo was taken.

The caption stage's machinery does the calling (Gemini through ``google-genai``, or any
OpenAI-compatible server such as a vLLM-served base model): the same rate caps, retries, and
persistent response store, so a zero-shot answer is paid for once and a rerun costs nothing. The
difference is the prompt: a zero-shot prompt must not contain the true coordinates or the place
name (its ``${latitude}``/``${longitude}``/``${place}`` placeholders are refused), and the items
sent carry no place name.

The prediction table has the columns of every predictor. An image whose answer did not pass
the caption schema is still a row: its last stored raw answer goes through the lenient answer
parser, and where that finds nothing the row has empty coordinates (a miss), never a dropped row.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from geolocsft.answers import parse_answer
from geolocsft.captions.documents import caption_items, find_caption_file, read_caption
from geolocsft.captions.prompts import PLACEHOLDERS, PromptTemplate
from geolocsft.captions.runner import caption_images
from geolocsft.captions.stage import build_backend, runner_settings
from geolocsft.captions.store import ResponseStore
from geolocsft.errors import GeolocsftError
from geolocsft.predictions import PREDICTION_SCHEMA

log = logging.getLogger(__name__)

#: Keys of ``captions`` that a zero-shot predictor may set for itself; the rest it inherits.
OVERRIDABLE = (
    "backend",
    "model",
    "temperature",
    "max_output_tokens",
    "seed",
    "max_image_side",
    "concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "max_new_requests",
)


def predictor_settings(captions: dict[str, Any], predictor: dict[str, Any]) -> dict[str, Any]:
    """The caption-stage settings of a zero-shot predictor: ``captions`` with its overrides.

    ``gemini`` and ``openai`` blocks are merged key by key, so a predictor can point at another
    server (``openai.base_url``) and keep the rest.
    """
    settings = dict(captions)
    for key in OVERRIDABLE:
        if predictor.get(key) is not None:
            settings[key] = predictor[key]
    for block in ("gemini", "openai"):
        settings[block] = {**captions.get(block, {}), **predictor.get(block, {})}
    if settings["backend"] == "metadata":
        raise GeolocsftError(
            "a zero-shot predictor needs a model backend (gemini or openai), not metadata, "
            "which answers with the true coordinates"
        )
    return settings


def load_zero_shot_prompt(path: Path) -> PromptTemplate:
    """A prompt template that gives the model nothing of the answer."""
    prompt = PromptTemplate.load(path)
    leaked = sorted(p for p in PLACEHOLDERS if f"${p}" in prompt.text or f"${{{p}}}" in prompt.text)
    if leaked:
        names = ", ".join("${" + p + "}" for p in leaked)
        raise GeolocsftError(
            f"{path}: a zero-shot prompt must not contain {names}: "
            "it would tell the model the answer"
        )
    return prompt


def _last_failed_answer(store: ResponseStore, key: str) -> str | None:
    for failure in reversed(store.failures(key)):
        text = failure.get("response", {}).get("text")
        if text:
            return str(text)
    return None


def predict_zero_shot(
    targets: pl.DataFrame,
    prompt_path: Path,
    settings: dict[str, Any],
    answers_dir: Path,
    progress: bool = True,
    memo_dir: Path | None = None,
    failures_path: Path | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Ask the model for every target image; return the prediction table and the run summary.

    Answers go to ``answers_dir`` in the caption stage's sharded layout. An image left without
    an answer by a failure that may pass is a row without coordinates here; the caller fails
    the job afterwards (:func:`geolocsft.captions.stage.report_failures`).
    """
    prompt = load_zero_shot_prompt(prompt_path)
    backend = build_backend(settings)
    store = ResponseStore(Path(settings["store"]))
    # No place name: true coordinates stay only for the caption files' distance check.
    items = caption_items(targets, with_place=False)
    index, summary = caption_images(
        items,
        backend,
        store,
        prompt,
        runner_settings(settings),
        answers_dir,
        progress=progress,
        memo_dir=memo_dir,
        failures_path=failures_path,
    )
    status_of = dict(zip(index["image_id"], index["status"], strict=True))
    reason_of = dict(zip(index["image_id"], index["failure_reason"], strict=True))
    key_of = dict(zip(index["image_id"], index["store_key"], strict=True))
    rows = []
    for item in items:
        document_path = find_caption_file(answers_dir, item.image_id)
        lat: float | None = None
        lon: float | None = None
        raw: str | None = None
        if status_of.get(item.image_id) == "captioned" and document_path.exists():
            caption = read_caption(document_path)["caption"]
            coordinates = caption["answer"]["coordinates"]
            lat, lon = float(coordinates["latitude"]), float(coordinates["longitude"])
            raw = json.dumps(caption, ensure_ascii=False, sort_keys=True)
            status = "caption_json"
        else:
            key = key_of.get(item.image_id)
            raw = _last_failed_answer(store, key) if key else None
            parsed = parse_answer(raw)
            lat, lon = parsed.lat, parsed.lon
            reason = reason_of.get(item.image_id) or "failed"
            status = f"invalid_{reason}_{parsed.status}"
        rows.append(
            {
                "image_id": item.image_id,
                "pred_lat": lat,
                "pred_lon": lon,
                "true_lat": item.lat,
                "true_lon": item.lon,
                "raw_answer": raw,
                "parse_status": status,
                "answers_parsed": 0 if lat is None else 1,
            }
        )
    table = pl.DataFrame(rows, schema=PREDICTION_SCHEMA)
    log.info(
        "%d zero-shot predictions, %d without coordinates",
        table.height,
        int(table["pred_lat"].is_null().sum()),
    )
    return table, summary
