"""Base models: Hugging Face Hub downloads on the submit host (compute nodes stay offline)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from geolocsft.hub.fetch import fetch_repo, link_files
from geolocsft.hub.retry import RetryPolicy
from geolocsft.io import atomic_write_json

log = logging.getLogger(__name__)


def hub_model_slug(repo_id: str, revision: str | None) -> str:
    """A folder name for a hub model at a revision: ``Qwen/Qwen2.5-VL-7B-Instruct@main``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "--", repo_id)
    return f"{slug}@{re.sub(r'[^A-Za-z0-9_.-]+', '-', revision or 'main')}"


def download_model(
    repo_id: str,
    revision: str | None,
    out_dir: Path,
    cache_dir: Path,
    *,
    endpoint: str | None = None,
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Download a model snapshot (resumable) and record the exact commit it resolved to.

    The files go to the persistent cache ``<cache_dir>/models/<owner>--<name>/`` first (outside
    ``results/``, so a killed or failed job keeps what it received and the next run resumes it
    with Range requests, see :func:`geolocsft.hub.fetch.fetch_repo`), then are hard-linked
    (copied across file systems) into ``out_dir``. ``HF_ENDPOINT`` (a mirror) and ``HF_TOKEN``
    are honoured. ``out_dir/geolocsft_source.json`` records the repo, the requested revision,
    the commit and every file with its sha256.
    """
    fetched = fetch_repo(
        repo_id, "model", revision, None, cache_dir, endpoint=endpoint, retry=retry
    )
    link_files(fetched.files, out_dir)
    record = fetched.record()
    provenance = {
        "repo_id": repo_id,
        "requested_revision": fetched.requested_revision,
        "commit": fetched.commit,
        "endpoint": fetched.endpoint,
        "huggingface_hub": record["huggingface_hub"],
        "files": record["files"],
    }
    atomic_write_json(out_dir / "geolocsft_source.json", provenance, sort_keys=False)
    count = len(fetched.files)
    log.info("downloaded %s at %s (%d files) into %s", repo_id, fetched.commit, count, out_dir)
    return provenance
