"""One image's requests: paced, retried by failure class, every answer stored before use.

For an image without a stored answer:

1. the request waits for its send time (:class:`~geolocsft.captions.ratelimit.RateLimiter`);
2. a 429 waits for the server's retry delay (else exponential backoff with full jitter), a 5xx or
   a connection error backs off; these transient failures have their own budget
   (``max_transient_retries``; a timeout, which the server may have processed and billed,
   ``timeout_retries``) and never use up the budget of invalid answers;
3. an answer is stored before anything else happens: a valid one as the key's answer, an
   invalid one as a failure with its reason. A safety block is permanent at once; an answer cut
   at the output limit is asked once more with ``max_output_tokens_ceiling``; other invalid
   answers are asked again up to ``max_attempts`` answers in all;
4. a permanent failure is recorded in the store with every attempt's reason, so later runs do
   not ask again (unless ``captions.retry_failed``).

A 4xx rejection that every request would get (a bad key, an unknown model) stops the run from
sending more requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from geolocsft.captions.backends import (
    Backend,
    CaptionRequest,
    ModelResponse,
    RateLimited,
    RequestRejected,
    TransientError,
)
from geolocsft.captions.documents import CaptionFolder, CaptionItem
from geolocsft.captions.outcomes import PERMANENT, REJECTED, TRANSIENT, Attempt, Outcome
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.ratelimit import RateLimiter
from geolocsft.captions.schema import CAPTION_SCHEMA_VERSION
from geolocsft.captions.store import ResponseStore
from geolocsft.captions.validate import BLOCKED, TRUNCATED, ContentError, parse_caption
from geolocsft.images import JPEG_MIME_TYPE, ImagePreparation, prepared_jpeg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerSettings:
    """Concurrency, pacing, retries and checks of a captioning run (``captions`` in config)."""

    CONFIG_SECTION: ClassVar[str] = "captions"

    concurrency: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    #: share of each cap left unused, against arrival-time jitter at the server
    rate_margin: float
    estimated_prompt_tokens: int
    #: answers per image (invalid ones) before the image fails permanently
    max_attempts: int
    #: retries of one image after 429, 5xx and connection errors
    max_transient_retries: int
    #: retries of one image after a timeout (the server may have billed it)
    timeout_retries: int
    backoff_initial_s: float
    backoff_max_s: float
    flag_distance_km: float
    max_new_requests: int | None
    max_image_side: int
    max_output_tokens: int
    #: the output limit of the one retry of an answer cut at max_output_tokens (None: no retry)
    max_output_tokens_ceiling: int | None
    #: ask again for images recorded as permanent failures
    retry_failed: bool
    price_usd_per_million_input_tokens: float | None
    price_usd_per_million_output_tokens: float | None
    #: The rate caps' window: a minute for the APIs' RPM/TPM (shorter only in tests).
    rate_window_s: float
    #: Gemini Batch API: seconds between polls, and how long one run waits for a job.
    batch_poll_s: float = field(metadata={"key": "gemini.batch_poll_s"})
    batch_timeout_s: float = field(metadata={"key": "gemini.batch_timeout_s"})


@dataclass
class RequestCounts:
    """What this run asked and got, for the summary (billing in particular)."""

    #: requests that reached, or may have reached, the server
    sent: int = 0
    #: requests that failed to connect (never reached the server)
    not_sent: int = 0
    #: answers received (each billed, valid or not)
    answers: int = 0
    #: requests without an answer that the server may have processed: timeouts and connections
    #: dropped after sending
    possibly_billed: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    rejected: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "output": 0, "total": 0})

    def add_usage(self, response: ModelResponse) -> None:
        self.tokens["prompt"] += response.prompt_tokens or 0
        self.tokens["output"] += response.output_tokens or 0
        self.tokens["total"] += response.total_tokens or 0


def mime_type_and_bytes(path: Path | str, max_side: int) -> tuple[str, bytes]:
    """The image as the API gets it: 8-bit RGB JPEG, longest side at most ``max_side``."""
    preparation = ImagePreparation(max_side=max_side, max_pixels=None, jpeg_quality=90)
    return JPEG_MIME_TYPE, prepared_jpeg(Path(path), preparation)


def caption_request(
    item: CaptionItem, prompt: PromptTemplate, mime_type: str, data: bytes, max_tokens: int | None
) -> CaptionRequest:
    return CaptionRequest(
        image_id=item.image_id,
        image_bytes=data,
        mime_type=mime_type,
        prompt=prompt.render(item.lat, item.lon, item.place),
        lat=item.lat,
        lon=item.lon,
        place=item.place,
        max_output_tokens=max_tokens,
    )


def answer_record(
    backend: Backend,
    prompt: PromptTemplate,
    image_id: str,
    image_sha256: str,
    key: str,
    response: ModelResponse,
    max_output_tokens: int | None = None,
) -> dict[str, Any]:
    """What the store keeps of one answer (and what a caption file is made from)."""
    return {
        "key": key,
        "identity": {
            "image_sha256": image_sha256,
            "prompt_sha256": prompt.sha256,
            "backend": backend.name,
            "model": backend.model,
            "params": backend.identity_params(),
            "schema_version": CAPTION_SCHEMA_VERSION,
        },
        "origin": "api" if backend.paid else "offline",
        "first_image_id": image_id,
        "prompt_version": prompt.version,
        "response": {
            "text": response.text,
            "finish_reason": response.finish_reason,
            "block_reason": response.block_reason,
            "usage": {
                "prompt_tokens": response.prompt_tokens,
                "output_tokens": response.output_tokens,
                "total_tokens": response.total_tokens,
            },
            "model_version": response.model_version,
            "response_id": response.response_id,
            "latency_s": round(response.latency_s, 3),
            "max_output_tokens": max_output_tokens,
        },
        "raw": response.raw,
        "sdk": backend.sdk(),
        # An offline backend's answer is computed, not received: no time stamp, so its
        # caption files are a pure function of the inputs, like those rebuilt from the store.
        "received_at": (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if backend.paid else None
        ),
    }


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Requester:
    """Asks for one image's caption at a time (many at once on one event loop)."""

    def __init__(
        self,
        backend: Backend,
        store: ResponseStore,
        prompt: PromptTemplate,
        settings: RunnerSettings,
        folder: CaptionFolder,
        limiter: RateLimiter,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.store = store
        self.prompt = prompt
        self.settings = settings
        self.folder = folder
        self.limiter = limiter
        self.sleep = sleep
        self.counts = RequestCounts()
        self.require_thinking = backend.paid
        #: set by a rejection that every request would get: nothing more is sent
        self.stopped_by: str | None = None

    def _backoff(self, failures: int) -> float:
        s = self.settings
        cap = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (failures - 1))
        return random.uniform(0.0, cap)  # full jitter

    async def caption(self, item: CaptionItem, key: str) -> Outcome:
        """Ask until the image has a caption or a failure that ends this run's tries."""
        s = self.settings
        mime_type, data = JPEG_MIME_TYPE, b""
        if self.backend.needs_image:
            mime_type, data = await asyncio.to_thread(
                mime_type_and_bytes, item.path, s.max_image_side
            )
        attempts: list[Attempt] = []
        limit = s.max_output_tokens
        ceiling = s.max_output_tokens_ceiling
        invalid = transient = timeouts = 0
        while True:
            if self.stopped_by is not None:
                return self._failed(item, key, attempts, REJECTED, "not_sent", self.stopped_by)
            override = None if limit == s.max_output_tokens else limit
            request = caption_request(item, self.prompt, mime_type, data, override)
            reservation = await self.limiter.acquire(s.estimated_prompt_tokens + limit)
            if self.stopped_by is not None:
                return self._failed(item, key, attempts, REJECTED, "not_sent", self.stopped_by)
            try:
                response = await self.backend.generate(request)
            except RateLimited as exc:
                self.counts.sent += 1
                self.counts.rate_limited += 1
                self.limiter.settle(reservation, 0)
                attempts.append(Attempt("rate_limited", str(exc)))
                transient += 1
                if transient > s.max_transient_retries:
                    return self._failed(item, key, attempts, TRANSIENT)
                wait = exc.retry_after_s
                await self.sleep(wait if wait is not None else self._backoff(transient))
                continue
            except TransientError as exc:
                self._count_transient(exc)
                self.limiter.settle(reservation, None if exc.sent else 0)
                attempts.append(Attempt(exc.kind, str(exc)))
                if exc.kind == "timeout":
                    timeouts += 1
                    if timeouts > s.timeout_retries:
                        return self._failed(item, key, attempts, TRANSIENT)
                else:
                    transient += 1
                    if transient > s.max_transient_retries:
                        return self._failed(item, key, attempts, TRANSIENT)
                await self.sleep(self._backoff(transient + timeouts))
                continue
            except RequestRejected as exc:
                self.counts.sent += 1
                self.counts.rejected += 1
                self.limiter.settle(reservation, 0)
                attempts.append(Attempt(f"rejected_{exc.status}", str(exc)))
                if exc.fatal and self.stopped_by is None:
                    self.stopped_by = f"not sent: an earlier request was rejected ({exc})"
                    log.error("%s: %s; no further request is sent", item.image_id, exc)
                return self._failed(item, key, attempts, REJECTED)
            self.counts.sent += 1
            self.counts.answers += 1
            self.counts.add_usage(response)
            self.limiter.settle(reservation, response.total_tokens)
            record = answer_record(
                self.backend, self.prompt, item.image_id, item.sha256, key, response, limit
            )
            try:
                caption = parse_caption(response, self.require_thinking)
            except ContentError as exc:
                attempts.append(Attempt(exc.reason, exc.detail))
                if self.backend.paid:
                    failure = {**record, "failure": exc.reason, "failure_detail": exc.detail}
                    await asyncio.to_thread(self.store.put_failure, key, failure)
                if exc.reason == BLOCKED:
                    return await self._permanent(item, key, attempts)
                if exc.reason == TRUNCATED:
                    if ceiling is not None and ceiling > limit:
                        limit = ceiling
                        continue
                    return await self._permanent(item, key, attempts)
                invalid += 1
                if invalid >= s.max_attempts:
                    return await self._permanent(item, key, attempts)
                continue
            if self.backend.paid:
                # File writes (with fsync) leave the event loop free for other answers.
                await asyncio.to_thread(self.store.put, key, record)
            memo_key = self.folder.memo_key(item, key, self.stamp(key))
            written = await asyncio.to_thread(self.folder.write, item, caption, record, memo_key)
            return Outcome(
                item.image_id,
                "captioned",
                "api" if self.backend.paid else "offline",
                key,
                attempts,
                written.flagged,
                written.distance_km,
                caption_path=written.path,
                caption_sha256=written.sha256,
            )

    def stamp(self, key: str) -> str:
        """The stored answer's stamp (empty for an offline backend, which stores nothing)."""
        return (self.store.stamp(key) or "") if self.backend.paid else ""

    def _count_transient(self, exc: TransientError) -> None:
        counts = self.counts
        if exc.sent:
            counts.sent += 1
        else:
            counts.not_sent += 1
        if exc.kind == "timeout":
            counts.timeouts += 1
            counts.possibly_billed += 1
        elif exc.kind == "connection":
            counts.connection_errors += 1
            counts.possibly_billed += int(exc.sent)
        else:
            counts.server_errors += 1

    def _failed(
        self,
        item: CaptionItem,
        key: str,
        attempts: list[Attempt],
        failure_class: str,
        reason: str | None = None,
        detail: str | None = None,
    ) -> Outcome:
        if reason is not None:
            attempts = [*attempts, Attempt(reason, detail or "")]
        return Outcome(item.image_id, "failed", "api", key, attempts, failure_class=failure_class)

    async def _permanent(self, item: CaptionItem, key: str, attempts: list[Attempt]) -> Outcome:
        """Record a permanent failure with every attempt (earlier runs' too, when retried)."""
        if self.backend.paid:
            earlier = self.store.get_permanent(key)
            every = [Attempt(**a) for a in earlier["attempts"]] if earlier else []
            every += attempts
            record = {
                "key": key,
                "image_id": item.image_id,
                "image_sha256": item.sha256,
                "backend": self.backend.name,
                "model": self.backend.model,
                "prompt_version": self.prompt.version,
                "reason": attempts[-1].reason,
                "attempts": [a.as_dict() for a in every],
                "recorded_at": now_utc(),
            }
            await asyncio.to_thread(self.store.put_permanent, key, record)
            attempts = every
        return Outcome(item.image_id, "failed", "api", key, attempts, failure_class=PERMANENT)
