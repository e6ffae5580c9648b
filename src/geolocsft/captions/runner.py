"""Caption many images concurrently: the memo and the store first, then paced API requests.

One process captions the whole corpus with asyncio (``concurrency`` requests in flight), so the
stage runs at the API's speed rather than at one Python start-up per image. For each image, in
this order:

1. its caption file in the per-item memo (:class:`~geolocsft.captions.documents.CaptionFolder`),
   still made from the same stored answer: hard-linked into place, nothing read or validated;
2. its answer in the response store (key: image sha256, prompt sha256, backend, model,
   parameters, schema version), or an answer of the earlier schema upgraded: the file is
   rebuilt from it at no cost;
3. a permanent failure recorded by an earlier run: not asked again unless ``retry_failed``;
4. otherwise a request (:mod:`geolocsft.captions.requests`, or the Batch API in
   :mod:`geolocsft.captions.batch`).

The index has one row per image; images left without a caption are listed with every attempt
(:mod:`geolocsft.captions.outcomes` says what the stage does about them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from geolocsft.captions.backends import Backend
from geolocsft.captions.batch import BatchRun
from geolocsft.captions.documents import CaptionFolder, CaptionItem
from geolocsft.captions.legacy import LEGACY_SCHEMA_VERSION, upgrade_caption
from geolocsft.captions.outcomes import (
    PERMANENT,
    UNRESOLVED,
    Attempt,
    Outcome,
    counts_by_reason,
    failures_frame,
    index_frame,
)
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.ratelimit import RateLimiter
from geolocsft.captions.requests import Requester, RunnerSettings
from geolocsft.captions.schema import CAPTION_SCHEMA_VERSION
from geolocsft.captions.store import ResponseStore, key_maker
from geolocsft.captions.validate import ContentError, parse_caption, response_from_record
from geolocsft.errors import GeolocsftError

log = logging.getLogger(__name__)

#: Images whose keys and memo records are looked up at once.
KNOWN_CHUNK = 100_000


class CaptionRun:
    """Caption ``items`` with ``backend`` into ``out_dir`` (one JSON file per image)."""

    def __init__(
        self,
        backend: Backend,
        store: ResponseStore,
        prompt: PromptTemplate,
        settings: RunnerSettings,
        out_dir: Path,
        sleep: Callable[[float], Any] = asyncio.sleep,
        memo_dir: Path | None = None,
    ) -> None:
        self.backend = backend
        self.store = store
        self.prompt = prompt
        self.settings = settings
        self.folder = CaptionFolder(out_dir, prompt, settings.flag_distance_km, memo_dir)
        self.limiter = RateLimiter(
            settings.requests_per_minute,
            settings.tokens_per_minute,
            settings.rate_window_s,
            settings.rate_margin,
        )
        largest = max(settings.max_output_tokens, settings.max_output_tokens_ceiling or 0)
        self.limiter.check(settings.estimated_prompt_tokens + largest)
        self.requester = Requester(
            backend, store, prompt, settings, self.folder, self.limiter, sleep
        )
        self.outcomes: list[Outcome] = []
        self._key_makers: dict[str, Callable[[str], str]] = {}

    def key(self, item: CaptionItem, schema_version: str = CAPTION_SCHEMA_VERSION) -> str:
        """The store key of an item's request (in this schema, or an earlier one)."""
        maker = self._key_makers.get(schema_version)
        if maker is None:
            maker = self._key_makers[schema_version] = key_maker(
                prompt_sha256=self.prompt.sha256,
                backend=self.backend.name,
                model=self.backend.model,
                params=self.backend.identity_params(),
                schema_version=schema_version,
            )
        return maker(item.sha256)

    def _from_store(self, item: CaptionItem, key: str) -> Outcome | None:
        """The caption file rebuilt from a stored answer (this schema's, or the earlier one's,
        which is then upgraded and stored under the current key), or None."""
        stored = self.store.get(key)
        if stored is None:
            legacy = self.store.get(self.key(item, LEGACY_SCHEMA_VERSION))
            if legacy is None:
                return None
            stored = _upgraded(legacy, key)
            self.store.put(key, stored)
        try:
            caption = parse_caption(response_from_record(stored), self.requester.require_thinking)
        except ContentError as exc:
            raise GeolocsftError(
                f"{item.image_id}: the stored answer {self.store.root}/responses/{key[:2]}/"
                f"{key}.json is not a valid caption ({exc}); move it away to ask again"
            ) from None
        memo_key = self.folder.memo_key(item, key, self.requester.stamp(key))
        written = self.folder.write(item, caption, stored, memo_key)
        return Outcome(
            item.image_id,
            "captioned",
            "import" if written.origin == "import" else "store",
            key,
            flagged=written.flagged,
            distance_km=written.distance_km,
            caption_path=written.path,
            caption_sha256=written.sha256,
        )

    def _known(
        self, items: Sequence[CaptionItem]
    ) -> tuple[list[Outcome | None], list[tuple[int, CaptionItem, str]]]:
        """What needs no request (memo, store, recorded permanent failures), and the rest.

        In chunks, so the keys and memo records of a million images are never all in memory.
        """
        paid = self.backend.paid
        known: list[Outcome | None] = [None] * len(items)
        pending = []
        for start in range(0, len(items), KNOWN_CHUNK):
            chunk = items[start : start + KNOWN_CHUNK]
            keys = [self.key(item) for item in chunk]
            # One stat per image: a memo entry is made from the stored answer's file as it is.
            stamps = [self.store.stamp(key) if paid else "" for key in keys]
            memo_keys = [
                self.folder.memo_key(item, key, stamp) if stamp is not None else None
                for item, key, stamp in zip(chunk, keys, stamps, strict=True)
            ]
            memo = self.folder.lookup([k for k in memo_keys if k is not None])
            hits = [
                (position, item, key, memo[memo_key])
                for position, (item, key, memo_key) in enumerate(
                    zip(chunk, keys, memo_keys, strict=True), start
                )
                if memo_key is not None and memo_key in memo
            ]
            linked = self.folder.link_all([(item.image_id, hit) for _, item, _, hit in hits])
            for (position, item, key, _), written in zip(hits, linked, strict=True):
                known[position] = Outcome(
                    item.image_id,
                    "captioned",
                    "store" if written.origin == "api" else written.origin,
                    key,
                    flagged=written.flagged,
                    distance_km=written.distance_km,
                    caption_path=written.path,
                    caption_sha256=written.sha256,
                )
            for position, (item, key) in enumerate(zip(chunk, keys, strict=True), start):
                if known[position] is not None:
                    continue
                if paid:
                    outcome = self._from_store(item, key)
                    if outcome is None and not self.settings.retry_failed:
                        outcome = self._recorded_failure(item, key)
                    if outcome is not None:
                        known[position] = outcome
                        continue
                pending.append((position, item, key))
        return known, pending

    def _recorded_failure(self, item: CaptionItem, key: str) -> Outcome | None:
        record = self.store.get_permanent(key)
        if record is None:
            return None
        attempts = [Attempt(**a) for a in record["attempts"]]
        return Outcome(item.image_id, "failed", "store", key, attempts, failure_class=PERMANENT)

    async def run(self, items: Sequence[CaptionItem], progress: bool = True) -> pl.DataFrame:
        """Caption every item; return the index (one row per item, in the items' order)."""
        self.folder.prepare()
        try:
            known, pending = self._known(items)
        finally:
            self.folder.save()
        limit = self.settings.max_new_requests
        if self.backend.paid and limit is not None and len(pending) > limit:
            await self.backend.aclose()
            raise GeolocsftError(
                f"{len(pending)} images need new captions from {self.backend.name} "
                f"{self.backend.model} with prompt {self.prompt.version} "
                f"(sha256 {self.prompt.sha256[:12]}), more than captions.max_new_requests = "
                f"{limit}; {len(items) - len(pending)} are already in the store. Raise "
                "captions.max_new_requests to pay for them (nothing was sent)."
            )
        log.info(
            "%d images: %d with an answer already, %d to request from %s %s",
            len(items),
            len(items) - len(pending),
            len(pending),
            self.backend.name,
            self.backend.model,
        )
        bar = tqdm(
            total=len(pending),
            desc=f"captioning ({self.backend.name})",
            unit="img",
            disable=not progress or None,
            mininterval=1.0,
        )

        fresh: list[Outcome | None] = [None] * len(pending)
        queue = iter(enumerate(pending))

        async def worker() -> None:
            # `concurrency` workers take the next image when one is done: a million pending
            # images are not a million tasks, and one slow request holds up nothing else.
            for number, (_, item, key) in queue:
                try:
                    fresh[number] = await self.requester.caption(item, key)
                finally:
                    bar.update(1)

        try:
            if getattr(self.backend, "batch", False):
                batch = BatchRun(self.requester)
                fresh = list(await batch.run([(item, key) for _, item, key in pending]))
            else:
                async with asyncio.TaskGroup() as workers:
                    for _ in range(min(self.settings.concurrency, len(pending))):
                        workers.create_task(worker())
        finally:
            bar.close()
            self.folder.save()
            await self.backend.aclose()
        for (position, _, _), outcome in zip(pending, fresh, strict=True):
            known[position] = outcome
        self.outcomes = [outcome for outcome in known if outcome is not None]
        assert len(self.outcomes) == len(items)
        return index_frame(self.outcomes)

    def failures(self) -> pl.DataFrame:
        """Every attempt of every image without a caption (after :meth:`run`)."""
        return failures_frame(self.outcomes)

    def summary(self, index: pl.DataFrame, wall_s: float) -> dict[str, Any]:
        """Counts, requests, tokens and estimated cost of this run, for summary.json."""
        s = self.settings
        counts = self.requester.counts
        paid = self.backend.paid
        cost = possible = None
        if s.price_usd_per_million_input_tokens is not None:
            output_price = s.price_usd_per_million_output_tokens or 0.0
            cost = round(
                counts.tokens["prompt"] * s.price_usd_per_million_input_tokens / 1e6
                + counts.tokens["output"] * output_price / 1e6,
                4,
            )
            possible = round(
                counts.possibly_billed
                * (
                    s.estimated_prompt_tokens * s.price_usd_per_million_input_tokens
                    + s.max_output_tokens * output_price
                )
                / 1e6,
                4,
            )
        source = index["source"]
        captioned = index["status"] == "captioned"
        return {
            "backend": self.backend.name,
            "model": self.backend.model,
            "prompt_version": self.prompt.version,
            "prompt_sha256": self.prompt.sha256,
            "schema_version": CAPTION_SCHEMA_VERSION,
            "images": index.height,
            "captioned": int(captioned.sum()),
            "from_store": int((captioned & source.is_in(["store", "import"])).sum()),
            "imported": int((captioned & (source == "import")).sum()),
            "new_from_api": int((captioned & (source == "api")).sum()),
            "offline": int((captioned & (source == "offline")).sum()),
            "failed": int((~captioned).sum()),
            "failed_by_reason": counts_by_reason(index, (PERMANENT, *UNRESOLVED)),
            "permanent_failures": int((index["failure_class"] == PERMANENT).sum()),
            "permanent_by_reason": counts_by_reason(index, (PERMANENT,)),
            "unresolved": int(index["failure_class"].is_in(list(UNRESOLVED)).sum()),
            "unresolved_by_reason": counts_by_reason(index, UNRESOLVED),
            "flagged": int(index["flagged"].fill_null(False).sum()),
            "requests_sent": counts.sent if paid else 0,
            "requests_not_sent": counts.not_sent,
            "answers_received": counts.answers if paid else 0,
            "billed_requests": counts.answers if paid else 0,
            "possibly_billed_requests": counts.possibly_billed,
            "rate_limited": counts.rate_limited,
            "server_errors": counts.server_errors,
            "timeouts": counts.timeouts,
            "connection_errors": counts.connection_errors,
            "rejected": counts.rejected,
            "timeout_s": getattr(self.backend, "timeout_s", None),
            "tokens": dict(counts.tokens) if paid else {"prompt": 0, "output": 0, "total": 0},
            "estimated_cost_usd": cost,
            "possibly_billed_cost_usd_at_most": possible,
            "wall_s": round(wall_s, 2),
        }


def _upgraded(legacy: dict[str, Any], key: str) -> dict[str, Any]:
    """A stored ``geocaption-1`` answer as this schema's answer under ``key``."""
    caption = upgrade_caption(json.loads(legacy["response"]["text"]))
    identity = {**legacy["identity"], "schema_version": CAPTION_SCHEMA_VERSION}
    response = {**legacy["response"], "text": json.dumps(caption, ensure_ascii=False)}
    upgraded = {"schema_version": LEGACY_SCHEMA_VERSION, "key": legacy["key"]}
    return {
        **legacy,
        "key": key,
        "identity": identity,
        "response": response,
        "upgraded_from": upgraded,
    }


def caption_images(
    items: Sequence[CaptionItem],
    backend: Backend,
    store: ResponseStore,
    prompt: PromptTemplate,
    settings: RunnerSettings,
    out_dir: Path,
    progress: bool = True,
    memo_dir: Path | None = None,
    failures_path: Path | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Run a whole captioning pass; return the index and the summary. ``failures_path``, when
    given, receives every attempt of every image left without a caption (CSV)."""
    started = time.monotonic()
    run = CaptionRun(backend, store, prompt, settings, out_dir, memo_dir=memo_dir)
    index = asyncio.run(run.run(items, progress=progress))
    summary = run.summary(index, time.monotonic() - started)
    if failures_path is not None:
        failures_path.parent.mkdir(parents=True, exist_ok=True)
        run.failures().write_csv(failures_path)
    log.info("captioning summary: %s", json.dumps(summary, sort_keys=True))
    return index, summary
