"""Is an answer a caption? Validation of a model's response, with a short reason when it is not.

The reasons say what happens next (see :mod:`geolocsft.captions.requests`):

* ``blocked`` (a safety block of the prompt or the answer): permanent, never asked again;
* ``truncated`` (the answer hit the output token limit): asked once more with a larger limit;
* ``empty_response``, ``markdown_fences``, ``malformed_json``, ``schema_violation``: an invalid
  answer, asked again up to ``captions.max_attempts`` answers per image.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from geolocsft.captions.backends import ModelResponse
from geolocsft.captions.schema import GeoCaption

BLOCKED = "blocked"
TRUNCATED = "truncated"
#: Finish reasons of an answer stopped by a content policy (Gemini; OpenAI's content_filter).
SAFETY_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "CONTENT_FILTER",
    }
)
TRUNCATION_FINISH_REASONS = frozenset({"MAX_TOKENS", "LENGTH"})


class ContentError(Exception):
    """An answer came back but cannot be a caption (the reason is a short code)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_caption(response: ModelResponse, require_thinking: bool) -> GeoCaption:
    """The validated caption in a response, or :class:`ContentError` saying why not."""
    if response.block_reason:
        raise ContentError(BLOCKED, f"the prompt was blocked: {response.block_reason}")
    finish = (response.finish_reason or "").upper()
    if finish in SAFETY_FINISH_REASONS:
        raise ContentError(BLOCKED, f"the answer was stopped by a content policy ({finish})")
    if finish in TRUNCATION_FINISH_REASONS:
        raise ContentError(TRUNCATED, f"the answer hit the output token limit ({finish})")
    if not response.text or not response.text.strip():
        if finish and finish not in {"STOP", "FINISH_REASON_UNSPECIFIED"}:
            raise ContentError(BLOCKED, f"no text; finish reason {finish}")
        raise ContentError("empty_response", "the response has no candidates or no text")
    text = response.text.strip()
    if text.startswith("```"):
        raise ContentError("markdown_fences", "the JSON is wrapped in markdown code fences")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContentError("malformed_json", f"{exc.msg} at character {exc.pos}") from None
    return validate_caption(value, require_thinking)


def validate_caption(value: Any, require_thinking: bool) -> GeoCaption:
    """Caption JSON data as a :class:`GeoCaption`, or :class:`ContentError`."""
    try:
        caption = GeoCaption.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContentError(
            "schema_violation", f"{exc.error_count()} errors, first at {where}: {first['msg']}"
        ) from None
    if require_thinking and caption.thinking is None:
        raise ContentError("schema_violation", "1 errors, first at thinking: the reasoning is null")
    return caption


def response_from_record(stored: dict[str, Any]) -> ModelResponse:
    """The response part of a stored record, for validating it again."""
    response = stored["response"]
    return ModelResponse(
        text=response.get("text"),
        finish_reason=response.get("finish_reason"),
        block_reason=response.get("block_reason"),
    )
