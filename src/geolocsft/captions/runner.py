"""Caption many images concurrently: store first, then rate-limited, retried API calls.

One process captions the whole corpus with asyncio (``concurrency`` requests in flight), so the
stage runs at the API's speed rather than at one Python start-up per image. For each image:

1. its store key (image sha256, prompt sha256, backend, model, parameters, schema version);
   a valid answer in the store is reused at no cost;
2. otherwise the request waits for the rate limiter (requests and tokens per rolling minute),
   is sent, and is retried on 429 (after the server's retry delay), 5xx and timeouts
   (exponential backoff with full jitter) and on content errors (blocked, truncated, malformed
   JSON, markdown fences, schema violations), at most ``max_attempts`` times in all;
3. every answer is stored before anything else happens (valid ones as the key's answer,
   invalid ones as failures with the reason), then the caption file is written atomically.

An image that still has no valid answer is recorded as failed with its reason; the run goes on.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
from pydantic import ValidationError
from tqdm import tqdm

from geolocsft.captions.backends import (
    Backend,
    CaptionRequest,
    ModelResponse,
    PermanentError,
    RateLimited,
    TransientError,
)
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.schema import CAPTION_SCHEMA_VERSION, GeoCaption, ModelGeoCaption
from geolocsft.captions.store import ResponseStore, response_key
from geolocsft.errors import GeolocsftError
from geolocsft.geo import haversine_km
from geolocsft.images import JPEG_MIME_TYPE, ImagePreparation, prepared_jpeg
from geolocsft.io import atomic_write_json

log = logging.getLogger(__name__)

INDEX_SCHEMA = {
    "image_id": pl.String,
    "status": pl.String,
    "source": pl.String,
    "flagged": pl.Boolean,
    "answer_distance_km": pl.Float64,
    "attempts": pl.Int64,
    "failure_reason": pl.String,
    "failure_detail": pl.String,
    "store_key": pl.String,
}


@dataclass(frozen=True)
class CaptionItem:
    """One manifest image to caption."""

    image_id: str
    path: Path
    sha256: str
    lat: float
    lon: float
    place: str | None


@dataclass(frozen=True)
class RunnerSettings:
    """Concurrency, limits and checks of a captioning run (``captions`` in config)."""

    CONFIG_SECTION: ClassVar[str] = "captions"

    concurrency: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    estimated_prompt_tokens: int
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float
    flag_distance_km: float
    max_new_requests: int | None
    max_image_side: int
    max_output_tokens: int
    price_usd_per_million_input_tokens: float | None
    price_usd_per_million_output_tokens: float | None
    #: The rate caps' rolling window: a minute for the APIs' RPM/TPM (shorter only in tests).
    rate_window_s: float
    #: Gemini Batch API: seconds between polls, and how long one run waits for a job.
    batch_poll_s: float = field(metadata={"key": "gemini.batch_poll_s"})
    batch_timeout_s: float = field(metadata={"key": "gemini.batch_timeout_s"})


class ContentError(Exception):
    """An answer came back but cannot be a caption (the reason is a short code)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_caption(response: ModelResponse, require_thinking: bool) -> GeoCaption:
    """The validated caption in a response, or :class:`ContentError` saying why not."""
    if response.block_reason:
        raise ContentError("blocked", f"the prompt was blocked: {response.block_reason}")
    finish = (response.finish_reason or "").upper()
    if finish in {"MAX_TOKENS", "LENGTH"}:
        raise ContentError("truncated", f"the answer hit the output token limit ({finish})")
    if not response.text or not response.text.strip():
        if finish and finish not in {"STOP", "FINISH_REASON_UNSPECIFIED"}:
            raise ContentError("blocked", f"no text; finish reason {finish}")
        raise ContentError("empty_response", "the response has no candidates or no text")
    text = response.text.strip()
    if text.startswith("```"):
        raise ContentError("markdown_fences", "the JSON is wrapped in markdown code fences")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContentError("malformed_json", f"{exc.msg} at character {exc.pos}") from None
    model = ModelGeoCaption if require_thinking else GeoCaption
    try:
        parsed = model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ContentError(
            "schema_violation", f"{exc.error_count()} errors, first at {where}: {first['msg']}"
        ) from None
    return GeoCaption.model_validate(parsed.model_dump())


class RateLimiter:
    """Caps on requests and tokens in any rolling window (60 s): never exceeded.

    Each request reserves an upper bound of its tokens (prompt estimate + max output tokens)
    when it starts; :meth:`settle` replaces the reservation by the real usage when known.
    """

    def __init__(
        self,
        requests_per_window: int | None,
        tokens_per_window: int | None,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests = requests_per_window
        self.tokens = tokens_per_window
        self.window_s = window_s
        self.clock = clock
        self.events: collections.deque[list[float]] = collections.deque()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> list[float]:
        async with self._lock:
            while True:
                now = self.clock()
                while self.events and self.events[0][0] <= now - self.window_s:
                    self.events.popleft()
                used_tokens = sum(e[1] for e in self.events)
                requests_ok = self.requests is None or len(self.events) < self.requests
                tokens_ok = (
                    self.tokens is None or used_tokens + tokens <= self.tokens or not self.events
                )
                if requests_ok and tokens_ok:
                    event = [now, float(tokens)]
                    self.events.append(event)
                    return event
                await asyncio.sleep(max(self.events[0][0] + self.window_s - now, 0.001))

    @staticmethod
    def settle(event: list[float], tokens: int | None) -> None:
        if tokens is not None:
            event[1] = float(tokens)


def mime_type_and_bytes(path: Path, max_side: int) -> tuple[str, bytes]:
    """The image as the API gets it: 8-bit RGB JPEG, longest side at most ``max_side``."""
    preparation = ImagePreparation(max_side=max_side, max_pixels=None, jpeg_quality=90)
    return JPEG_MIME_TYPE, prepared_jpeg(path, preparation)


def caption_document(
    item: CaptionItem,
    caption: GeoCaption,
    stored: dict[str, Any],
    prompt: PromptTemplate,
    flag_distance_km: float,
) -> dict[str, Any]:
    """The caption file: caption, provenance and the distance check.

    A deterministic function of the stored answer, so rebuilding from the store reproduces the
    same bytes.
    """
    coordinates = caption.answer.coordinates
    distance = float(haversine_km(item.lat, item.lon, coordinates.latitude, coordinates.longitude))
    response = stored["response"]
    return {
        "schema_version": CAPTION_SCHEMA_VERSION,
        "image_id": item.image_id,
        "image_sha256": item.sha256,
        "caption": caption.model_dump(mode="json"),
        "provenance": {
            "backend": stored["identity"]["backend"],
            "model": stored["identity"]["model"],
            "model_version": response.get("model_version"),
            "prompt_version": prompt.version,
            "prompt_sha256": prompt.sha256,
            "params": stored["identity"]["params"],
            "usage": response.get("usage"),
            "latency_s": response.get("latency_s"),
            "finish_reason": response.get("finish_reason"),
            "response_id": response.get("response_id"),
            "sdk": stored.get("sdk"),
            "received_at": stored.get("received_at"),
            "store_key": stored["key"],
        },
        "check": {
            "true_lat": item.lat,
            "true_lon": item.lon,
            "answer_distance_km": round(distance, 3),
            "flag_distance_km": flag_distance_km,
            "flagged": distance > flag_distance_km,
        },
    }


@dataclass
class _Outcome:
    image_id: str
    status: str  # captioned | failed
    source: str  # store | api | none
    attempts: int = 0
    flagged: bool | None = None
    distance_km: float | None = None
    reason: str | None = None
    detail: str | None = None
    key: str | None = None


class CaptionRun:
    """Caption ``items`` with ``backend`` into ``out_dir`` (one JSON per image)."""

    def __init__(
        self,
        backend: Backend,
        store: ResponseStore,
        prompt: PromptTemplate,
        settings: RunnerSettings,
        out_dir: Path,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.store = store
        self.prompt = prompt
        self.settings = settings
        self.out_dir = out_dir
        self.sleep = sleep
        self.limiter = RateLimiter(
            settings.requests_per_minute, settings.tokens_per_minute, settings.rate_window_s
        )
        self.calls = 0
        self.tokens = collections.Counter[str]()
        self.require_thinking = backend.paid

    def key(self, item: CaptionItem) -> str:
        return response_key(
            image_sha256=item.sha256,
            prompt_sha256=self.prompt.sha256,
            backend=self.backend.name,
            model=self.backend.model,
            params=self.backend.identity_params(),
            schema_version=CAPTION_SCHEMA_VERSION,
        )

    def _write(
        self,
        item: CaptionItem,
        stored: dict[str, Any],
        source: str,
        caption: GeoCaption | None = None,
    ) -> _Outcome:
        """Write the caption file of a stored answer (validated unless ``caption`` is given)."""
        if caption is None:
            caption = parse_caption(_response_from_record(stored), self.require_thinking)
        document = caption_document(
            item, caption, stored, self.prompt, self.settings.flag_distance_km
        )
        atomic_write_json(self.out_dir / f"{item.image_id}.json", document)
        check = document["check"]
        return _Outcome(
            item.image_id,
            "captioned",
            source,
            flagged=check["flagged"],
            distance_km=check["answer_distance_km"],
            key=stored["key"],
        )

    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (attempt - 1))
        return random.uniform(0.0, cap)  # full jitter

    async def _call(self, item: CaptionItem, key: str) -> _Outcome:
        mime_type, data = await asyncio.to_thread(
            mime_type_and_bytes, item.path, self.settings.max_image_side
        )
        request = self._request(item, mime_type, data)
        reserve = self.settings.estimated_prompt_tokens + self.settings.max_output_tokens
        reason, detail = "not_attempted", "max_attempts is 0"
        for attempt in range(1, self.settings.max_attempts + 1):
            event = await self.limiter.acquire(reserve)
            self.calls += 1
            try:
                response = await self.backend.generate(request)
            except RateLimited as exc:
                RateLimiter.settle(event, 0)
                reason, detail = "rate_limited", str(exc)
                wait = exc.retry_after_s if exc.retry_after_s is not None else None
                await self.sleep(wait if wait is not None else self._backoff(attempt))
                continue
            except TransientError as exc:
                RateLimiter.settle(event, 0)
                reason, detail = "transient_error", str(exc)
                await self.sleep(self._backoff(attempt))
                continue
            except PermanentError as exc:
                RateLimiter.settle(event, 0)
                return _Outcome(
                    item.image_id,
                    "failed",
                    "api",
                    attempt,
                    None,
                    None,
                    "permanent_error",
                    str(exc),
                    key,
                )
            RateLimiter.settle(event, response.total_tokens)
            self.tokens["prompt"] += response.prompt_tokens or 0
            self.tokens["output"] += response.output_tokens or 0
            self.tokens["total"] += response.total_tokens or 0
            record = self._record(item.image_id, item.sha256, key, response)
            try:
                caption = parse_caption(response, self.require_thinking)
            except ContentError as exc:
                reason, detail = exc.reason, exc.detail
                if self.backend.paid:
                    self.store.put_failure(
                        key, {**record, "failure": exc.reason, "failure_detail": exc.detail}
                    )
                continue
            if self.backend.paid:
                # File writes (with fsync) leave the event loop free for other answers.
                await asyncio.to_thread(self.store.put, key, record)
            outcome = await asyncio.to_thread(self._write, item, record, "api", caption)
            outcome.attempts = attempt
            return outcome
        return _Outcome(
            item.image_id,
            "failed",
            "api",
            self.settings.max_attempts,
            reason=reason,
            detail=detail,
            key=key,
        )

    # -- Gemini Batch API -------------------------------------------------------------------

    async def _run_batch(self, pending: list[tuple[CaptionItem, str]]) -> list[_Outcome]:
        """Caption ``pending`` through batch jobs, resuming any job an earlier run left behind.

        A submitted job's name and keys are written to the store before the first poll, so a
        run killed while waiting picks the same job up again instead of paying twice.
        """
        failures: dict[str, tuple[str, str]] = {}
        for job_path in sorted((self.store.root / "batches").glob("*.json")):
            job = json.loads(job_path.read_text())
            if job.get("collected") or job.get("model") != self.backend.model:
                continue
            log.info("resuming batch job %s (%d requests)", job["name"], len(job["keys"]))
            failures |= await self._collect_batch(job_path, job)
        outcomes, still = [], []
        for item, key in pending:
            stored = self.store.get(key)
            if stored is not None:
                outcomes.append(self._write(item, stored, "api"))
            else:
                still.append((item, key))
        if still:
            requests = []
            for item, key in still:
                mime_type, data = await asyncio.to_thread(
                    mime_type_and_bytes, item.path, self.settings.max_image_side
                )
                requests.append((key, self._request(item, mime_type, data)))
            self.calls += 1
            name = await self.backend.submit_batch(requests, f"geolocsft {self.prompt.version}")  # type: ignore[attr-defined]
            job = {
                "name": name,
                "backend": self.backend.name,
                "model": self.backend.model,
                "prompt_version": self.prompt.version,
                "keys": {
                    key: {"image_id": item.image_id, "image_sha256": item.sha256}
                    for item, key in still
                },
                "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "collected": False,
            }
            job_path = self.store.batch_path(name.rsplit("/", 1)[-1])
            atomic_write_json(job_path, job)
            log.info("submitted batch job %s with %d requests", name, len(still))
            failures |= await self._collect_batch(job_path, job)
        for item, key in still:
            stored = self.store.get(key)
            if stored is not None:
                outcomes.append(self._write(item, stored, "api"))
            else:
                reason, detail = failures.get(key, ("batch_missing", "no answer in the batch job"))
                outcomes.append(
                    _Outcome(
                        item.image_id, "failed", "api", 1, reason=reason, detail=detail, key=key
                    )
                )
        return outcomes

    async def _collect_batch(
        self, job_path: Path, job: dict[str, Any]
    ) -> dict[str, tuple[str, str]]:
        """Wait for a batch job, store every answer, mark the job collected; return failures."""
        started = time.monotonic()
        while True:
            state, results = await self.backend.poll_batch(job["name"])  # type: ignore[attr-defined]
            if results is not None:
                break
            if time.monotonic() - started > self.settings.batch_timeout_s:
                raise GeolocsftError(
                    f"batch job {job['name']} is still {state} after "
                    f"{self.settings.batch_timeout_s:.0f} s; rerun the workflow later to collect "
                    f"it (its name is kept in {job_path})"
                )
            await self.sleep(self.settings.batch_poll_s)
        failures: dict[str, tuple[str, str]] = {}
        for key, response, error in results:
            if key is None or key not in job["keys"]:
                continue
            if response is None:
                failures[key] = ("batch_error", error or "no response")
                continue
            self.tokens["prompt"] += response.prompt_tokens or 0
            self.tokens["output"] += response.output_tokens or 0
            self.tokens["total"] += response.total_tokens or 0
            image = job["keys"][key]
            record = self._record(image["image_id"], image["image_sha256"], key, response)
            try:
                parse_caption(response, self.require_thinking)
            except ContentError as exc:
                failures[key] = (exc.reason, exc.detail)
                self.store.put_failure(
                    key, {**record, "failure": exc.reason, "failure_detail": exc.detail}
                )
                continue
            self.store.put(key, record)
        if state != "JOB_STATE_SUCCEEDED":
            log.warning("batch job %s ended %s", job["name"], state)
        atomic_write_json(job_path, {**job, "collected": True, "state": state})
        return failures

    def _request(self, item: CaptionItem, mime_type: str, data: bytes) -> CaptionRequest:
        return CaptionRequest(
            image_id=item.image_id,
            image_bytes=data,
            mime_type=mime_type,
            prompt=self.prompt.render(item.lat, item.lon, item.place),
            lat=item.lat,
            lon=item.lon,
            place=item.place,
        )

    def _record(
        self, image_id: str, image_sha256: str, key: str, response: ModelResponse
    ) -> dict[str, Any]:
        return {
            "key": key,
            "identity": {
                "image_sha256": image_sha256,
                "prompt_sha256": self.prompt.sha256,
                "backend": self.backend.name,
                "model": self.backend.model,
                "params": self.backend.identity_params(),
                "schema_version": CAPTION_SCHEMA_VERSION,
            },
            "first_image_id": image_id,
            "prompt_version": self.prompt.version,
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
            },
            "raw": response.raw,
            "sdk": self.backend.sdk(),
            # An offline backend's answer is computed, not received: no time stamp, so its
            # caption files are a pure function of the inputs, like those rebuilt from the store.
            "received_at": (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if self.backend.paid else None
            ),
        }

    async def run(self, items: Sequence[CaptionItem], progress: bool = True) -> pl.DataFrame:
        """Caption every item; return the index (one row per item)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        outcomes: list[_Outcome] = []
        pending: list[tuple[CaptionItem, str]] = []
        for item in items:
            key = self.key(item)
            stored = self.store.get(key) if self.backend.paid else None
            if stored is not None:
                outcomes.append(self._write(item, stored, "store"))
            else:
                pending.append((item, key))
        limit = self.settings.max_new_requests
        if self.backend.paid and limit is not None and len(pending) > limit:
            raise GeolocsftError(
                f"{len(pending)} images need new captions from {self.backend.name} "
                f"{self.backend.model} with prompt {self.prompt.version} "
                f"(sha256 {self.prompt.sha256[:12]}), more than captions.max_new_requests = "
                f"{limit}; {len(items) - len(pending)} are already in the store. Raise "
                "captions.max_new_requests to pay for them (nothing was sent)."
            )
        log.info(
            "%d images: %d from the store, %d to request from %s %s",
            len(items),
            len(items) - len(pending),
            len(pending),
            self.backend.name,
            self.backend.model,
        )
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        bar = tqdm(
            total=len(pending),
            desc=f"captioning ({self.backend.name})",
            unit="img",
            disable=not progress or None,
            mininterval=1.0,
        )

        async def one(item: CaptionItem, key: str) -> _Outcome:
            async with semaphore:
                try:
                    return await self._call(item, key)
                finally:
                    bar.update(1)

        try:
            if getattr(self.backend, "batch", False):
                outcomes += await self._run_batch(pending)
            else:
                outcomes += await asyncio.gather(*(one(item, key) for item, key in pending))
        finally:
            bar.close()
            await self.backend.aclose()
        order = {item.image_id: i for i, item in enumerate(items)}
        outcomes.sort(key=lambda o: order[o.image_id])
        return pl.DataFrame(
            {
                "image_id": [o.image_id for o in outcomes],
                "status": [o.status for o in outcomes],
                "source": [o.source for o in outcomes],
                "flagged": [o.flagged for o in outcomes],
                "answer_distance_km": [o.distance_km for o in outcomes],
                "attempts": [o.attempts for o in outcomes],
                "failure_reason": [o.reason for o in outcomes],
                "failure_detail": [o.detail for o in outcomes],
                "store_key": [o.key for o in outcomes],
            },
            schema=INDEX_SCHEMA,
        )

    def summary(self, index: pl.DataFrame, wall_s: float) -> dict[str, Any]:
        """Counts, tokens and estimated cost of this run, for summary.json and the log."""
        failed = index.filter(pl.col("status") == "failed")
        cost = None
        s = self.settings
        if s.price_usd_per_million_input_tokens is not None:
            cost = round(
                self.tokens["prompt"] * s.price_usd_per_million_input_tokens / 1e6
                + self.tokens["output"] * (s.price_usd_per_million_output_tokens or 0.0) / 1e6,
                4,
            )
        return {
            "backend": self.backend.name,
            "model": self.backend.model,
            "prompt_version": self.prompt.version,
            "prompt_sha256": self.prompt.sha256,
            "images": index.height,
            "captioned": int((index["status"] == "captioned").sum()),
            "from_store": int((index["source"] == "store").sum()),
            "new_from_api": int(
                ((index["source"] == "api") & (index["status"] == "captioned")).sum()
            ),
            "api_calls": self.calls if self.backend.paid else 0,
            "failed": failed.height,
            "failed_by_reason": dict(
                collections.Counter(failed["failure_reason"].to_list()).most_common()
            ),
            "flagged": int(index["flagged"].fill_null(False).sum()),
            "tokens": dict(self.tokens),
            "estimated_cost_usd": cost,
            "wall_s": round(wall_s, 2),
        }


def _response_from_record(stored: dict[str, Any]) -> ModelResponse:
    response = stored["response"]
    return ModelResponse(
        text=response.get("text"),
        finish_reason=response.get("finish_reason"),
        block_reason=response.get("block_reason"),
    )


def items_from_manifest(manifest: pl.DataFrame, splits: Sequence[str]) -> list[CaptionItem]:
    """The manifest rows of the given splits, with a place name for the prompt."""
    return caption_items(manifest.filter(pl.col("split").is_in(list(splits))))


def caption_items(rows: pl.DataFrame, with_place: bool = True) -> list[CaptionItem]:
    """Manifest rows as caption items, with a place name for the prompt (unless ``with_place``
    is false: a zero-shot question must not carry the answer)."""
    items = []
    for row in rows.iter_rows(named=True):
        parts = [row.get("nearest_place"), row.get("admin1"), row.get("country_code")]
        place = (", ".join(p for p in parts if p) or None) if with_place else None
        items.append(
            CaptionItem(
                image_id=row["image_id"],
                path=Path(row["path"]),
                sha256=row["sha256"],
                lat=row["lat"],
                lon=row["lon"],
                place=place,
            )
        )
    return items


def caption_images(
    items: Sequence[CaptionItem],
    backend: Backend,
    store: ResponseStore,
    prompt: PromptTemplate,
    settings: RunnerSettings,
    out_dir: Path,
    progress: bool = True,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Run a whole captioning pass; return the index and the summary."""
    started = time.monotonic()
    run = CaptionRun(backend, store, prompt, settings, out_dir)
    index = asyncio.run(run.run(items, progress=progress))
    summary = run.summary(index, time.monotonic() - started)
    log.info("captioning summary: %s", json.dumps(summary, sort_keys=True))
    return index, summary
