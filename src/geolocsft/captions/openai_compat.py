"""Any OpenAI-compatible chat-completions server (vLLM, Ollama, LiteLLM, OpenAI itself)."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

from geolocsft.captions.backends import (
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


def openai_identity(params: GenerationParams, json_schema: bool) -> dict[str, Any]:
    """The parameters that make an answer what it is (part of its store key)."""
    return {**params.as_dict(), "json_schema": json_schema}


class OpenAICompatibleBackend:
    """The image goes as a base64 data URL; the answer is constrained with ``response_format``
    ``json_schema`` (vLLM and OpenAI honour it). The key, if the server wants one, comes from
    the environment variable named by ``api_key_env``.
    """

    name = "openai"
    paid = True
    needs_image = True

    def __init__(
        self,
        model: str,
        params: GenerationParams,
        *,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 600.0,
        json_schema: bool = True,
    ) -> None:
        import openai

        self.model = model
        self.params = params
        self.json_schema = json_schema
        self.timeout_s = timeout_s
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or "not-needed",
            max_retries=0,
            timeout=timeout_s,
        )

    def identity_params(self) -> dict[str, Any]:
        return openai_identity(self.params, self.json_schema)

    def sdk(self) -> str:
        return f"openai {package_version('openai')}"

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
                max_tokens=request.max_output_tokens or self.params.max_output_tokens,
                seed=self.params.seed,
                **extra,
            )
        except openai.RateLimitError as exc:
            header = exc.response.headers.get("retry-after") if exc.response else None
            raise RateLimited(f"HTTP 429: {exc.message}", parse_duration(header)) from None
        except openai.APIStatusError as exc:
            message = f"HTTP {exc.status_code}: {exc.message}"
            if exc.status_code >= 500 or exc.status_code == 408:
                raise TransientError(message, "server_error", sent=True) from None
            raise rejection(exc.status_code, message) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            failure = transport_failure(exc, self.timeout_s)
            if isinstance(exc, openai.APITimeoutError) and (failure is None or failure.sent):
                failure = transport_failure(TimeoutError(), self.timeout_s)
            raise (failure or TransientError(str(exc), "connection", sent=True)) from None
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return ModelResponse(
            text=choice.message.content if choice else None,
            finish_reason=(choice.finish_reason or "").upper() if choice else None,
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
