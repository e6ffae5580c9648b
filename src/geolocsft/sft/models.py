"""Base models: Hugging Face Hub downloads on the submit host (compute nodes stay offline)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)


def hub_model_slug(repo_id: str, revision: str | None) -> str:
    """A folder name for a hub model at a revision: ``Qwen/Qwen2.5-VL-7B-Instruct@main``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "--", repo_id)
    return f"{slug}@{re.sub(r'[^A-Za-z0-9_.-]+', '-', revision or 'main')}"


def download_model(repo_id: str, revision: str | None, out_dir: Path) -> dict[str, str]:
    """Download a model snapshot (resumable) and record the exact commit it resolved to.

    Uses ``huggingface_hub.snapshot_download``, which honours ``HF_ENDPOINT`` (a mirror) and
    ``HF_TOKEN``, resumes partial files and skips files already present.
    """
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().model_info(repo_id, revision=revision)
    commit = info.sha or revision or "unknown"
    snapshot_download(repo_id=repo_id, revision=commit, local_dir=out_dir)
    provenance = {"repo_id": repo_id, "requested_revision": revision or "main", "commit": commit}
    (out_dir / "geolocsft_source.json").write_text(json.dumps(provenance, indent=2) + "\n")
    log.info("downloaded %s at %s into %s", repo_id, commit, out_dir)
    return provenance
