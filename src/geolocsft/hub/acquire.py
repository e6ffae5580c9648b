"""The acquire stage: a dataset repo from the Hugging Face Hub, fetched resumably into the
persistent cache (:mod:`geolocsft.hub.fetch`), unpacked for ingest (:mod:`geolocsft.hub.unpack`),
with a record of the commit and every file (``source.json``).

The package's parts, one job each: :mod:`~geolocsft.hub.remote` (resolve a revision, list a
commit's files), :mod:`~geolocsft.hub.download` (resumable download, checksum verification),
:mod:`~geolocsft.hub.retry` (transient failures, user-facing errors), :mod:`~geolocsft.hub.fetch`
(a repo into the cache), :mod:`~geolocsft.hub.archives` and :mod:`~geolocsft.hub.shards` (the
two unpackers), :mod:`~geolocsft.hub.unpacking` (what they share).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geolocsft.hub.fetch import fetch_repo
from geolocsft.hub.retry import RetryPolicy
from geolocsft.hub.unpack import unpack
from geolocsft.hub.unpacking import BadInputPolicy, UnpackSettings
from geolocsft.io import atomic_write_json


def acquire_dataset(
    settings: Mapping[str, Any],
    cache_dir: Path,
    images_dir: Path,
    metadata_csv: Path,
    source_json: Path,
    *,
    on_bad_input: BadInputPolicy = "quarantine",
    retry: RetryPolicy | None = None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """Fetch the repo of an ``acquire.datasets.<name>`` block, unpack it and write its record."""
    fetched = fetch_repo(
        settings["repo_id"],
        settings.get("repo_type", "dataset"),
        settings.get("revision"),
        settings.get("allow_patterns"),
        cache_dir,
        ignore_patterns=settings.get("ignore_patterns"),
        retry=retry,
        endpoint=endpoint,
    )
    result = unpack(
        fetched.paths(),
        images_dir,
        metadata_csv,
        UnpackSettings.from_config(settings, on_bad_input=on_bad_input),
    )
    record = {**fetched.record(), "unpack": result.summary()}
    atomic_write_json(source_json, record)
    return record
