"""Gemini through the official ``google-genai`` SDK (async client), online and Batch API."""

from __future__ import annotations

import os
import time
from typing import Any

from geolocsft.captions.backends import (
    BackendError,
    CaptionRequest,
    GenerationParams,
    ModelResponse,
    RateLimited,
    TransientError,
    package_version,
    parse_duration,
    rejection,
    transport_failure,
)
from geolocsft.captions.schema import response_json_schema, response_schema_text
from geolocsft.errors import GeolocsftError

GEMINI_KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BATCH_DONE_STATES = frozenset(
    {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
)


def gemini_identity(params: GenerationParams, mode: str) -> dict[str, Any]:
    """The parameters that make a Gemini answer what it is (part of its store key). Online and
    batch answers are the same model's answers to the same request: one key."""
    return {**params.as_dict(), "mode": mode}


class GeminiBackend:
    """Gemini through ``google-genai``.

    ``structured`` (default) asks for JSON that follows the caption schema
    (``response_json_schema``). ``grounding`` instead enables the Google Search tool and puts
    the schema in the prompt, since some models cannot combine tools with a response schema.
    ``base_url`` points the SDK at another endpoint (a proxy, or the tests' local stand-in).
    With ``batch`` the runner uses :meth:`submit_batch` and :meth:`poll_batch` (the Gemini Batch
    API, half the price, answers within a day) instead of :meth:`generate`.
    """

    name = "gemini"
    paid = True
    needs_image = True

    def __init__(
        self,
        model: str,
        params: GenerationParams,
        *,
        mode: str = "structured",
        base_url: str | None = None,
        timeout_s: float = 600.0,
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
        self.timeout_s = timeout_s
        self._types = types
        self._generation_config: Any = None
        self._sdk = f"google-genai {package_version('google-genai')}" + (" batch" if batch else "")
        self._client = genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=base_url or None,
                timeout=int(timeout_s * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )

    def identity_params(self) -> dict[str, Any]:
        return gemini_identity(self.params, self.mode)

    def sdk(self) -> str:
        return self._sdk

    def _config(self, max_output_tokens: int | None = None) -> Any:
        """The request's generation config (built once: it is the same for every image)."""
        if self._generation_config is None:
            self._generation_config = self._build_config()
        if max_output_tokens is not None and max_output_tokens != self.params.max_output_tokens:
            return self._generation_config.model_copy(
                update={"max_output_tokens": max_output_tokens}
            )
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
            raise TransientError("the batch API returned no job name", "server_error", sent=True)
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
                model=self.model,
                contents=self.contents(request),
                config=self._config(request.max_output_tokens),
            )
        except errors.APIError as exc:
            raise self._classify(exc) from None
        except Exception as exc:  # timeouts and connection errors of aiohttp/httpx
            failure = transport_failure(exc, self.timeout_s)
            if failure is None:
                raise
            raise failure from None
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
                    retry_after = parse_duration(detail["retryDelay"])
            response = getattr(exc, "response", None)
            header = getattr(response, "headers", {}) or {}
            if retry_after is None and "retry-after" in {k.lower() for k in header}:
                retry_after = parse_duration(
                    next(v for k, v in header.items() if k.lower() == "retry-after")
                )
            return RateLimited(message, retry_after)
        if code >= 500 or code in (408, 0):
            return TransientError(message, "server_error", sent=True)
        return rejection(code, message)

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
