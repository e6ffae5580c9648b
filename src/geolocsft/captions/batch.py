"""The Gemini Batch API: one job for every image without a stored answer, resumable.

A submitted job's name and keys are written to the store before the first poll, so a run killed
while waiting (or one that stops waiting after ``gemini.batch_timeout_s``) picks the same job up
again instead of paying twice. Answers are validated and stored like online ones. An image whose
answer failed goes to the next run's job (a transient failure), except a safety block, or an
image whose stored invalid answers reached ``max_attempts`` (permanent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from geolocsft.captions.documents import CaptionItem
from geolocsft.captions.outcomes import PERMANENT, TRANSIENT, Attempt, Outcome
from geolocsft.captions.requests import (
    Requester,
    answer_record,
    caption_request,
    mime_type_and_bytes,
    now_utc,
)
from geolocsft.captions.validate import BLOCKED, ContentError, parse_caption, response_from_record
from geolocsft.errors import GeolocsftError
from geolocsft.io import atomic_write_json

log = logging.getLogger(__name__)

Pending = tuple[CaptionItem, str]  # item, store key


class BatchRun:
    """Caption images through batch jobs, with the online run's store, folder and counts."""

    def __init__(self, requester: Requester) -> None:
        self.requester = requester
        self.backend: Any = requester.backend  # a GeminiBackend with batch=True
        self.store = requester.store
        self.settings = requester.settings

    async def run(self, pending: list[Pending]) -> list[Outcome]:
        failures: dict[str, tuple[str, str]] = {}
        for job_path in sorted((self.store.root / "batches").glob("*.json")):
            job = json.loads(job_path.read_text())
            if job.get("collected") or job.get("model") != self.backend.model:
                continue
            log.info("resuming batch job %s (%d requests)", job["name"], len(job["keys"]))
            failures |= await self._collect(job_path, job)
        still = [p for p in pending if self.store.get(p[1]) is None]
        if still:
            failures |= await self._submit(still)
        return [self._outcome(item, key, failures) for item, key in pending]

    async def _submit(self, still: list[Pending]) -> dict[str, tuple[str, str]]:
        requests = []
        prompt = self.requester.prompt
        for item, key in still:
            mime_type, data = await asyncio.to_thread(
                mime_type_and_bytes, item.path, self.settings.max_image_side
            )
            requests.append((key, caption_request(item, prompt, mime_type, data, None)))
        name = await self.backend.submit_batch(requests, f"geolocsft {prompt.version}")
        self.requester.counts.sent += len(requests)
        job = {
            "name": name,
            "backend": self.backend.name,
            "model": self.backend.model,
            "prompt_version": prompt.version,
            "keys": {
                key: {"image_id": item.image_id, "image_sha256": item.sha256} for item, key in still
            },
            "submitted_at": now_utc(),
            "collected": False,
        }
        job_path = self.store.batch_path(name.rsplit("/", 1)[-1])
        atomic_write_json(job_path, job)
        log.info("submitted batch job %s with %d requests", name, len(still))
        return await self._collect(job_path, job)

    async def _collect(self, job_path: Path, job: dict[str, Any]) -> dict[str, tuple[str, str]]:
        """Wait for a batch job, store every answer, mark the job collected; return failures."""
        started = time.monotonic()
        while True:
            state, results = await self.backend.poll_batch(job["name"])
            if results is not None:
                break
            if time.monotonic() - started > self.settings.batch_timeout_s:
                raise GeolocsftError(
                    f"batch job {job['name']} is still {state} after "
                    f"{self.settings.batch_timeout_s:.0f} s; rerun the workflow later to collect "
                    f"it (its name is kept in {job_path})"
                )
            await self.requester.sleep(self.settings.batch_poll_s)
        failures: dict[str, tuple[str, str]] = {}
        counts = self.requester.counts
        for key, response, error in results:
            if key is None or key not in job["keys"]:
                continue
            if response is None:
                failures[key] = ("batch_error", error or "no response")
                continue
            counts.answers += 1
            counts.add_usage(response)
            image = job["keys"][key]
            record = answer_record(
                self.backend,
                self.requester.prompt,
                image["image_id"],
                image["image_sha256"],
                key,
                response,
                self.backend.params.max_output_tokens,
            )
            try:
                parse_caption(response, self.requester.require_thinking)
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

    def _outcome(
        self, item: CaptionItem, key: str, failures: dict[str, tuple[str, str]]
    ) -> Outcome:
        stored = self.store.get(key)
        if stored is not None:
            caption = parse_caption(response_from_record(stored), self.requester.require_thinking)
            folder = self.requester.folder
            memo_key = folder.memo_key(item, key, self.requester.stamp(key))
            written = folder.write(item, caption, stored, memo_key)
            return Outcome(
                item.image_id,
                "captioned",
                "api",
                key,
                flagged=written.flagged,
                distance_km=written.distance_km,
                caption_path=written.path,
                caption_sha256=written.sha256,
            )
        reason, detail = failures.get(key, ("batch_missing", "no answer in the batch job"))
        attempt = Attempt(reason, detail)
        invalid = len(self.store.failures(key))
        if reason == BLOCKED or (reason != "batch_error" and invalid >= self.settings.max_attempts):
            self.store.put_permanent(
                key,
                {
                    "key": key,
                    "image_id": item.image_id,
                    "image_sha256": item.sha256,
                    "backend": self.backend.name,
                    "model": self.backend.model,
                    "prompt_version": self.requester.prompt.version,
                    "reason": reason,
                    "attempts": [attempt.as_dict()],
                    "recorded_at": now_utc(),
                },
            )
            return Outcome(item.image_id, "failed", "api", key, [attempt], failure_class=PERMANENT)
        return Outcome(item.image_id, "failed", "api", key, [attempt], failure_class=TRANSIENT)
