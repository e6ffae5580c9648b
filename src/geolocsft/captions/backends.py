"""Caption backends: Gemini (google-genai), any OpenAI-compatible server, and the offline
answer-only 'metadata' backend.

A backend turns one request (image bytes + prompt) into a :class:`ModelResponse`, or raises
:class:`RateLimited`, :class:`TransientError` or :class:`PermanentError`; retries, rate limits
and validation are the runner's job, so every backend is retried and accounted the same way.
The SDKs' own retries are switched off for that reason. API keys come from the environment
only and are never part of a message, a log line or an artifact.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, ClassVar, Protocol

from geolocsft.captions.schema import (
    Answer,
    Coordinates,
    FinalLocationConfirmation,
    GeoCaption,
    response_json_schema,
    response_schema_text,
)
from geolocsft.errors import GeolocsftError

GEMINI_KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BATCH_DONE_STATES = frozenset(
    {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
)


@dataclass(frozen=True)
class CaptionRequest:
    """One image to caption."""

    image_id: str
    image_bytes: bytes
    mime_type: str
    prompt: str
    lat: float
    lon: float
    place: str | None


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
    """HTTP 429: wait ``retry_after_s`` (the server's word) or back off."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TransientError(BackendError):
    """5xx, timeouts, dropped connections: worth retrying with backoff."""


class PermanentError(BackendError):
    """4xx other than 429 (bad request, bad key, unknown model): retrying will not help."""


class Backend(Protocol):
    name: str
    model: str
    paid: bool

    def identity_params(self) -> dict[str, Any]: ...

    def sdk(self) -> str: ...

    async def generate(self, request: CaptionRequest) -> ModelResponse: ...

    async def aclose(self) -> None: ...


def _package_version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _parse_duration(text: Any) -> float | None:
    """Seconds from '27s', '1.5s' or a number; None if unparseable."""
    if isinstance(text, int | float):
        return float(text)
    if isinstance(text, str) and (match := re.fullmatch(r"\s*([0-9.]+)\s*s?\s*", text)):
        return float(match.group(1))
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


class GeminiBackend:
    """Gemini through the official ``google-genai`` SDK (async client).

    ``structured`` (default) asks for JSON that follows the caption schema
    (``response_json_schema``). ``grounding`` instead enables the Google Search tool and puts
    the schema in the prompt, since some models cannot combine tools with a response schema.
    ``base_url`` points the SDK at another endpoint (a proxy, or the tests' local stand-in).
    With ``batch`` the runner uses :meth:`submit_batch` and :meth:`poll_batch` (the Gemini Batch
    API, half the price, answers within a day) instead of :meth:`generate`.
    """

    name = "gemini"
    paid = True

    def __init__(
        self,
        model: str,
        params: GenerationParams,
        *,
        mode: str = "structured",
        base_url: str | None = None,
        timeout_s: float = 120.0,
        batch: bool = False,
    ) -> None:
        from google import genai
        from google.genai import types

        api_key = next((os.environ[v] for v in GEMINI_KEY_VARIABLES if os.environ.get(v)), None)
        if not api_key:
            raise GeolocsftError(
                "the gemini backend needs an API key in the environment variable GEMINI_API_KEY "
                "(or GOOGLE_API_KEY); keys are never read from config files"
            )
        self.model = model
        self.params = params
        self.mode = mode
        self.batch = batch
        self._types = types
        self._generation_config: Any = None
        self._sdk = f"google-genai {_package_version('google-genai')}" + (" batch" if batch else "")
        self._client = genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=base_url or None,
                timeout=int(timeout_s * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )

    def identity_params(self) -> dict[str, Any]:
        # Online and batch answers are the same model's answers to the same request: one key.
        return {**self.params.as_dict(), "mode": self.mode}

    def sdk(self) -> str:
        return self._sdk

    def _config(self) -> Any:
        """The request's generation config (built once: it is the same for every image)."""
        if self._generation_config is None:
            self._generation_config = self._build_config()
        return self._generation_config

    def _build_config(self) -> Any:
        types = self._types
        common: dict[str, Any] = {
            "temperature": self.params.temperature,
            "max_output_tokens": self.params.max_output_tokens,
            "seed": self.params.seed,
        }
        if self.mode == "grounding":
            return types.GenerateContentConfig(
                **common, tools=[types.Tool(google_search=types.GoogleSearch())]
            )
        return types.GenerateContentConfig(
            **common,
            response_mime_type="application/json",
            response_json_schema=response_json_schema(),
        )

    def contents(self, request: CaptionRequest) -> list[Any]:
        prompt = request.prompt
        if self.mode == "grounding":
            prompt += "\n\nReturn only one JSON object following this JSON schema:\n"
            prompt += response_schema_text()
        return [
            self._types.Part.from_bytes(data=request.image_bytes, mime_type=request.mime_type),
            prompt,
        ]

    def _content(self, request: CaptionRequest) -> Any:
        image, prompt = self.contents(request)
        return self._types.Content(
            role="user", parts=[image, self._types.Part.from_text(text=prompt)]
        )

    async def submit_batch(
        self, requests: list[tuple[str, CaptionRequest]], display_name: str
    ) -> str:
        """Submit one batch job of inlined requests (each tagged with its store key)."""
        from google.genai import errors

        types = self._types
        inlined = [
            types.InlinedRequest(
                contents=[self._content(request)], metadata={"key": key}, config=self._config()
            )
            for key, request in requests
        ]
        try:
            job = await self._client.aio.batches.create(
                model=self.model,
                src=inlined,
                config=types.CreateBatchJobConfig(display_name=display_name),
            )
        except errors.APIError as exc:
            raise self._classify(exc) from None
        if not job.name:
            raise TransientError("the batch API returned no job name")
        return job.name

    async def poll_batch(
        self, name: str
    ) -> tuple[str, list[tuple[str | None, ModelResponse | None, str | None]] | None]:
        """The job's state, and when it has ended, (key, response or None, error or None) each."""
        from google.genai import errors

        try:
            job = await self._client.aio.batches.get(name=name)
        except errors.APIError as exc:
            raise self._classify(exc) from None
        state = str(getattr(job.state, "value", job.state))
        if state not in BATCH_DONE_STATES:
            return state, None
        results: list[tuple[str | None, ModelResponse | None, str | None]] = []
        for answer in (job.dest.inlined_responses or []) if job.dest else []:
            key = (answer.metadata or {}).get("key")
            if answer.error is not None or answer.response is None:
                error = answer.error
                detail = f"{getattr(error, 'code', '')} {getattr(error, 'message', '')}".strip()
                results.append((key, None, detail or "no response"))
            else:
                results.append((key, self.normalise(answer.response, 0.0), None))
        return state, results

    async def generate(self, request: CaptionRequest) -> ModelResponse:
        from google.genai import errors

        started = time.monotonic()
        try:
            response = await self._client.aio.models.generate_content(
                model=self.model, contents=self.contents(request), config=self._config()
            )
        except errors.APIError as exc:
            raise self._classify(exc) from None
        except Exception as exc:  # timeouts and connection errors of httpx/aiohttp
            if type(exc).__name__.endswith(("Timeout", "TimeoutException", "ConnectError")) or (
                isinstance(exc, OSError | TimeoutError)
            ):
                raise TransientError(f"{type(exc).__name__}: {exc}") from None
            if "httpx" in type(exc).__module__ or "aiohttp" in type(exc).__module__:
                raise TransientError(f"{type(exc).__name__}: {exc}") from None
            raise
        return self.normalise(response, time.monotonic() - started)

    @staticmethod
    def _classify(exc: Any) -> BackendError:
        code = int(getattr(exc, "code", 0) or 0)
        message = f"HTTP {code} {getattr(exc, 'status', '') or ''}: {getattr(exc, 'message', '')}"
        if code == 429:
            retry_after = None
            details = getattr(exc, "details", None) or {}
            error = details.get("error", details) if isinstance(details, dict) else {}
            for detail in error.get("details", []) if isinstance(error, dict) else []:
                if isinstance(detail, dict) and "retryDelay" in detail:
                    retry_after = _parse_duration(detail["retryDelay"])
            response = getattr(exc, "response", None)
            header = getattr(response, "headers", {}) or {}
            if retry_after is None and "retry-after" in {k.lower() for k in header}:
                retry_after = _parse_duration(
                    next(v for k, v in header.items() if k.lower() == "retry-after")
                )
            return RateLimited(message, retry_after)
        if code >= 500 or code in (408, 0):
            return TransientError(message)
        return PermanentError(message)

    def normalise(self, response: Any, latency_s: float) -> ModelResponse:
        """A ModelResponse from the SDK's GenerateContentResponse."""
        candidates = response.candidates or []
        finish = candidates[0].finish_reason if candidates else None
        feedback = response.prompt_feedback
        usage = response.usage_metadata
        text = None
        if candidates and candidates[0].content and candidates[0].content.parts:
            text = "".join(p.text or "" for p in candidates[0].content.parts if not p.thought)
        return ModelResponse(
            text=text,
            finish_reason=getattr(finish, "value", finish),
            block_reason=(
                getattr(feedback.block_reason, "value", feedback.block_reason)
                if feedback and feedback.block_reason
                else None
            ),
            prompt_tokens=usage.prompt_token_count if usage else None,
            output_tokens=usage.candidates_token_count if usage else None,
            total_tokens=usage.total_token_count if usage else None,
            model_version=response.model_version,
            response_id=response.response_id,
            latency_s=latency_s,
            raw=response.model_dump(mode="json", exclude_none=True),
        )

    async def aclose(self) -> None:
        await self._client.aio.aclose()


class OpenAICompatibleBackend:
    """Any OpenAI-compatible chat-completions server (vLLM, Ollama, LiteLLM, OpenAI itself).

    The image goes as a base64 data URL; the answer is constrained with ``response_format``
    ``json_schema`` (vLLM and OpenAI honour it). The key, if the server wants one, comes from
    the environment variable named by ``api_key_env``.
    """

    name = "openai"
    paid = True

    def __init__(
        self,
        model: str,
        params: GenerationParams,
        *,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        json_schema: bool = True,
    ) -> None:
        import openai

        self.model = model
        self.params = params
        self.json_schema = json_schema
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "not-needed",
            max_retries=0,
            timeout=timeout_s,
        )

    def identity_params(self) -> dict[str, Any]:
        return {**self.params.as_dict(), "json_schema": self.json_schema}

    def sdk(self) -> str:
        return f"openai {_package_version('openai')}"

    async def generate(self, request: CaptionRequest) -> ModelResponse:
        import openai

        data_url = (
            f"data:{request.mime_type};base64,{base64.b64encode(request.image_bytes).decode()}"
        )
        prompt = request.prompt
        extra: dict[str, Any] = {}
        if self.json_schema:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "geocaption",
                    "schema": response_json_schema(),
                    "strict": True,
                },
            }
        else:
            prompt += "\n\nReturn only one JSON object following this JSON schema:\n"
            prompt += response_schema_text()
        started = time.monotonic()
        try:
            response = await self._client.chat.completions.create(
                model=self.model,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": data_url}},
                            {"type": "text", "text": prompt},
                        ],
                    }
                ],
                temperature=self.params.temperature,
                max_tokens=self.params.max_output_tokens,
                seed=self.params.seed,
                **extra,
            )
        except openai.RateLimitError as exc:
            header = exc.response.headers.get("retry-after") if exc.response else None
            raise RateLimited(f"HTTP 429: {exc.message}", _parse_duration(header)) from None
        except openai.APIStatusError as exc:
            message = f"HTTP {exc.status_code}: {exc.message}"
            if exc.status_code >= 500 or exc.status_code == 408:
                raise TransientError(message) from None
            raise PermanentError(message) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from None
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return ModelResponse(
            text=choice.message.content if choice else None,
            finish_reason=(choice.finish_reason or "").upper() if choice else None,
            block_reason="no choices in the response" if choice is None else None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            total_tokens=usage.total_tokens if usage else None,
            model_version=response.model,
            response_id=response.id,
            latency_s=time.monotonic() - started,
            raw=response.model_dump(mode="json", exclude_none=True),
        )

    async def aclose(self) -> None:
        await self._client.close()


class MetadataBackend:
    """The answer-only ablation: no model, no network, no cost.

    Writes the ``answer`` part from the true coordinates and the offline reverse geocoder's
    region; ``thinking`` is null. It is what the bundled demo uses on a machine without an API
    key, and an honest baseline for what the reasoning adds.
    """

    name = "metadata"
    model = "none"
    paid = False

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
        return ModelResponse(text=json.dumps(caption.model_dump(mode="json")), finish_reason="STOP")

    async def aclose(self) -> None:
        return None
