"""A persistent, content-addressed store of every paid model response.

Keyed by what determines an answer: the image's sha256, the prompt's sha256, backend, model,
generation parameters and the caption schema version. It lives outside Snakemake's outputs
(``captions.store`` in config), so when Snakemake deletes a job's outputs before rerunning it,
or a run is killed, no answer that was paid for is asked for again. Every write is atomic
(temporary file, fsync, rename): a killed process never leaves half a JSON file.

Layout::

    <root>/responses/<k[:2]>/<key>.json      the valid answer for a key (one per key)
    <root>/failures/<k[:2]>/<key>/<n>.json   every answer that failed validation, with why
    <root>/permanent/<k[:2]>/<key>.json      an image that cannot get a caption (a safety block,
                                             invalid answers up to max_attempts, truncated twice)
                                             with every attempt's reason: not asked again unless
                                             captions.retry_failed is true
    <root>/batches/<name>.json               Gemini batch jobs in flight (resumable)
    <root>/imports/<time>.csv                reports of ``geolocsft captions import``
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from geolocsft.io import atomic_write_json, canonical_json


def response_key(
    *,
    image_sha256: str,
    prompt_sha256: str,
    backend: str,
    model: str,
    params: Mapping[str, Any],
    schema_version: str,
) -> str:
    """The store key of one request: sha256 over everything that shapes the answer."""
    identity = {
        "image_sha256": image_sha256,
        "prompt_sha256": prompt_sha256,
        "backend": backend,
        "model": model,
        "params": dict(params),
        "schema_version": schema_version,
    }
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()


def key_maker(
    *,
    prompt_sha256: str,
    backend: str,
    model: str,
    params: Mapping[str, Any],
    schema_version: str,
) -> Callable[[str], str]:
    """:func:`response_key` of many images with the same request: a function of the image's
    sha256 that serialises the rest once (a rerun computes a key for every image)."""
    marker = "@image_sha256@"
    text = canonical_json(
        {
            "image_sha256": marker,
            "prompt_sha256": prompt_sha256,
            "backend": backend,
            "model": model,
            "params": dict(params),
            "schema_version": schema_version,
        }
    )
    head, tail = (part.encode() for part in text.split(f'"{marker}"'))

    def key(image_sha256: str) -> str:
        return hashlib.sha256(head + json.dumps(image_sha256).encode() + tail).hexdigest()

    return key


class ResponseStore:
    """Valid responses by key, plus every failed response kept for audit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._responses = str(root / "responses")

    def _response_path(self, key: str) -> Path:
        return self.root / "responses" / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored valid response for ``key``, or ``None``."""
        path = self._response_path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            # Only possible if someone edited the file by hand: keep it aside, never delete it.
            path.rename(path.with_suffix(f".corrupt-{int(time.time())}"))
            return None

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Store the valid response of ``key`` (the first one wins; answers are never lost)."""
        path = self._response_path(key)
        if path.exists():
            return
        atomic_write_json(path, dict(record))

    def stamp(self, key: str) -> str | None:
        """Identifies the stored answer's file (inode and modification time), or None: a memo
        of what was built from it is valid while the stamp is the same. (One ``stat`` on a
        string path: it runs once per image on every rerun.)"""
        try:
            info = os.stat(f"{self._responses}/{key[:2]}/{key}.json")  # noqa: PTH116 (hot path)
        except FileNotFoundError:
            return None
        return f"{info.st_ino}:{info.st_mtime_ns}"

    def _permanent_path(self, key: str) -> Path:
        return self.root / "permanent" / key[:2] / f"{key}.json"

    def get_permanent(self, key: str) -> dict[str, Any] | None:
        """The permanent failure recorded for ``key``, or ``None``."""
        try:
            return json.loads(self._permanent_path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def put_permanent(self, key: str, record: Mapping[str, Any]) -> None:
        """Record that ``key`` cannot get a caption (replacing an earlier record)."""
        atomic_write_json(self._permanent_path(key), dict(record))

    def put_failure(self, key: str, record: Mapping[str, Any]) -> Path:
        """Keep a response that failed validation (raw text and reason) next to its key."""
        folder = self.root / "failures" / key[:2] / key
        folder.mkdir(parents=True, exist_ok=True)
        number = sum(1 for _ in folder.glob("*.json")) + 1
        path = folder / f"{number:03d}-{time.strftime('%Y%m%dT%H%M%S')}.json"
        atomic_write_json(path, dict(record))
        return path

    def failures(self, key: str) -> list[dict[str, Any]]:
        """Every failed response of ``key``, oldest first."""
        folder = self.root / "failures" / key[:2] / key
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]

    def batch_path(self, name: str) -> Path:
        return self.root / "batches" / f"{name}.json"
