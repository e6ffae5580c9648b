"""What every caption backend shares: requests, responses, failures, and the offline backend.

A backend turns one request (image bytes + prompt) into a :class:`ModelResponse`, or raises one
of the failures below; retries, pacing and validation are the runner's job, so every backend is
retried and accounted the same way. The SDKs' own retries are switched off for that reason. API
keys come from the environment only and are never part of a message, a log line or an artifact.
The network backends are :class:`geolocsft.captions.gemini.GeminiBackend` (google-genai) and
:class:`geolocsft.captions.openai_compat.OpenAICompatibleBackend` (any OpenAI-compatible server).

Failures say whether the request reached the server, because a request that reached it may be
billed even when no answer came back (a timeout, a dropped connection).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, ClassVar, Protocol

from geolocsft.captions.schema import (
    Answer,
    Coordinates,
    FinalLocationConfirmation,
    GeoCaption,
    caption_json,
)


@dataclass(frozen=True)
class CaptionRequest:
    """One image to caption. ``max_output_tokens`` overrides the backend's limit (a retry of a
    truncated answer); ``image_bytes`` is empty for a backend that never looks at the image."""

    image_id: str
    image_bytes: bytes
    mime_type: str
    prompt: str
    lat: float
    lon: float
    place: str | None
    max_output_tokens: int | None = None


@dataclass
class ModelResponse:
    """What a model answered, normalised across backends."""

    text: str | None
    finish_reason: str | None
    block_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    model_version: str | None = None
    response_id: str | None = None
    latency_s: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)


class BackendError(Exception):
    """A request failed before any answer came back."""


class RateLimited(BackendError):
    """HTTP 429: wait ``retry_after_s`` (the server's word) or back off. Not billed."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TransientError(BackendError):
    """5xx, a timeout or a connection failure: worth retrying with backoff.

    ``kind`` is ``server_error``, ``timeout`` or ``connection``; ``sent`` says whether the
    request may have reached the server (a timeout or a connection dropped after sending may
    have been processed, and billed, without an answer reaching us).
    """

    def __init__(self, message: str, kind: str, sent: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.sent = sent


class RequestRejected(BackendError):
    """4xx other than 429: the server refused this request as it is (not billed).

    ``fatal`` when every request would be refused the same way (a bad key, an unknown model, no
    permission): the run then stops sending.
    """

    def __init__(self, message: str, status: int, fatal: bool) -> None:
        super().__init__(message)
        self.status = status
        self.fatal = fatal


class Backend(Protocol):
    name: str
    model: str
    #: whether answers cost money (and are therefore kept in the response store)
    paid: bool
    #: whether the request carries the image (the offline backend never looks at it)
    needs_image: bool

    def identity_params(self) -> dict[str, Any]: ...

    def sdk(self) -> str: ...

    async def generate(self, request: CaptionRequest) -> ModelResponse: ...

    async def aclose(self) -> None: ...


def package_version(name: str) -> str:
    """The installed version of a distribution ('unknown' when it is not installed)."""
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def parse_duration(text: Any) -> float | None:
    """Seconds from '27s', '1.5s' or a number; None if unparseable."""
    if isinstance(text, int | float):
        return float(text)
    if isinstance(text, str) and (match := re.fullmatch(r"\s*([0-9.]+)\s*s?\s*", text)):
        return float(match.group(1))
    return None


def rejection(status: int, message: str) -> RequestRejected:
    """A 4xx rejection; fatal when no request could succeed (key, permission, model)."""
    fatal = status in (401, 403, 404) or (status == 400 and "api key" in message.lower())
    return RequestRejected(message, status, fatal)


#: Exception names of a transport failure before the request was sent (connect, DNS, pool).
_NOT_SENT = (
    "ConnectError",
    "ConnectTimeout",
    "PoolTimeout",
    "ConnectorError",
    "ConnectorDNSError",
    "ConnectionTimeoutError",
    "ConnectionRefused",
)


def transport_failure(exc: BaseException, timeout_s: float) -> TransientError | None:
    """A timeout or connection failure of httpx/aiohttp as a :class:`TransientError`, or None
    when ``exc`` is something else (a bug, to be raised as it is)."""
    names = [type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None]
    modules = [type(e).__module__ for e in (exc, exc.__cause__) if e is not None]
    never_sent = any(tag in n for n in names for tag in _NOT_SENT)
    if never_sent:
        return TransientError(
            f"could not connect to the server ({names[0]}: {exc})", "connection", sent=False
        )
    if isinstance(exc, TimeoutError) or any("Timeout" in n for n in names):
        return TransientError(
            f"no answer within {timeout_s:g} s (captions.timeout_s); the server may have "
            "processed, and billed, the request",
            "timeout",
            sent=True,
        )
    transport = any(m.split(".")[0] in {"httpx", "httpcore", "aiohttp"} for m in modules)
    if isinstance(exc, OSError) or transport:
        return TransientError(
            f"the connection failed after the request was sent ({names[0]}: {exc})",
            "connection",
            sent=True,
        )
    return None


@dataclass(frozen=True)
class GenerationParams:
    """Generation parameters; part of every caption's identity."""

    CONFIG_SECTION: ClassVar[str] = "captions"

    temperature: float
    max_output_tokens: int
    seed: int | None
    max_image_side: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "max_output_tokens": self.max_output_tokens,
            "seed": self.seed,
            "max_image_side": self.max_image_side,
        }


class MetadataBackend:
    """The answer-only ablation: no model, no network, no cost, no image work.

    Writes the ``answer`` part from the true coordinates and the offline reverse geocoder's
    region; ``thinking`` is null. It is what the bundled demo uses on a machine without an API
    key, and an honest baseline for what the reasoning adds. It never opens the image.
    """

    name = "metadata"
    model = "none"
    paid = False
    needs_image = False

    def identity_params(self) -> dict[str, Any]:
        return {}

    def sdk(self) -> str:
        return "geolocsft"

    async def generate(self, request: CaptionRequest) -> ModelResponse:
        region = request.place or "an unnamed place"
        caption = GeoCaption(
            thinking=None,
            answer=Answer(
                coordinates=Coordinates(
                    latitude=round(request.lat, 6), longitude=round(request.lon, 6), region=region
                ),
                final_location_confirmation=FinalLocationConfirmation(
                    confirmed_location=region,
                    decisive_features=[],
                    accuracy_assessment="from the photo's recorded GPS position (answer-only)",
                ),
            ),
        )
        return ModelResponse(text=json.dumps(caption_json(caption)), finish_reason="STOP")

    async def aclose(self) -> None:
        return None
