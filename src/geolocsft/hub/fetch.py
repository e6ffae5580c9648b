"""Fetching a Hub repo into the persistent cache: the files of one commit, resumably, verified.

:func:`fetch_repo` resolves a revision to its commit with ``huggingface_hub`` (``HfApi``), lists
the commit's files and downloads those matching the allow patterns into a persistent cache
outside ``results/`` (``cache/hub/<type>s/<owner>--<name>/``), so that Snakemake deleting the
outputs of a failed or killed job never throws received bytes away. Files already in
``blobs/<content id>`` are never downloaded again, whichever revision asks for them; the record
names the requested revision, the commit it resolved to and every file with its size and sha256.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from geolocsft.errors import GeolocsftError
from geolocsft.hub.download import download_resumable, verify_download
from geolocsft.hub.remote import (
    RemoteFile,
    list_commit_files,
    repo_cache_dir,
    repo_lock,
    resolve_commit,
    without_credentials,
)
from geolocsft.hub.retry import RetryPolicy
from geolocsft.io import file_sha256
from geolocsft.settings import from_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchedFile:
    """A downloaded, verified file: its path in the repo and its blob in the cache."""

    path: str
    size: int
    sha256: str
    lfs: bool
    local: Path

    def record(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "lfs": self.lfs}


@dataclass(frozen=True)
class FetchedRepo:
    """What :func:`fetch_repo` got: the commit a revision resolved to and the files."""

    repo_id: str
    repo_type: str
    requested_revision: str
    commit: str
    endpoint: str
    allow_patterns: tuple[str, ...] | None
    ignore_patterns: tuple[str, ...] | None
    files: tuple[FetchedFile, ...]
    huggingface_hub_version: str

    def paths(self) -> dict[str, Path]:
        """Repo path → the verified local file."""
        return {f.path: f.local for f in self.files}

    def record(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "requested_revision": self.requested_revision,
            "commit": self.commit,
            "endpoint": self.endpoint,
            "allow_patterns": list(self.allow_patterns) if self.allow_patterns else None,
            "ignore_patterns": list(self.ignore_patterns) if self.ignore_patterns else None,
            "huggingface_hub": self.huggingface_hub_version,
            "files": [f.record() for f in self.files],
        }


def fetch_repo(
    repo_id: str,
    repo_type: str,
    revision: str | None,
    allow_patterns: Sequence[str] | str | None,
    cache_dir: Path,
    *,
    ignore_patterns: Sequence[str] | str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    retry: RetryPolicy | None = None,
    max_workers: int = 4,
) -> FetchedRepo:
    """Download the files of ``repo_id`` at ``revision`` that match the patterns (resumable).

    ``revision`` (a branch, tag or commit; ``None`` = ``main``) is resolved to its commit once,
    and every file is then fetched at that commit. ``endpoint`` defaults to ``HF_ENDPOINT`` (read
    now, not at import) or the public Hub; ``token`` to ``HF_TOKEN`` or the stored login.
    Raises :class:`GeolocsftError` with the repo, file and what to do when anything fails; the
    bytes received so far stay in the cache and the next call resumes them.
    """
    import huggingface_hub
    from huggingface_hub import HfApi, constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, filter_repo_objects

    if repo_type not in ("dataset", "model"):
        raise GeolocsftError(
            f"{repo_id}: repo_type must be 'dataset' or 'model', not {repo_type!r}"
        )
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    retry = retry or from_config(RetryPolicy, {})
    requested = revision or "main"
    allow = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
    ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns
    folder = repo_cache_dir(cache_dir, repo_type, repo_id)
    api = HfApi(endpoint=endpoint, token=token, library_name="geolocsft")

    with repo_lock(folder):
        commit = resolve_commit(api, repo_id, repo_type, requested, endpoint, retry)
        log.info("%s %s: revision %s is commit %s", repo_type, repo_id, requested, commit)
        remote = list_commit_files(api, repo_id, repo_type, commit, folder, endpoint, retry)
        chosen = list(
            filter_repo_objects(
                remote,
                allow_patterns=list(allow) if allow else None,
                ignore_patterns=list(ignore) if ignore else None,
                key=lambda f: f.path,
            )
        )
        if not chosen:
            shown = ", ".join(f.path for f in remote[:20]) + (" ..." if len(remote) > 20 else "")
            raise GeolocsftError(
                f"{repo_id}@{commit}: no file matches allow_patterns {allow} / ignore_patterns "
                f"{ignore}; the repo holds: {shown or 'no files'}"
            )
        headers = build_hf_headers(token=token, library_name="geolocsft")
        (folder / "blobs").mkdir(parents=True, exist_ok=True)
        (folder / "partial").mkdir(parents=True, exist_ok=True)

        def fetch_one(item: RemoteFile) -> FetchedFile:
            blob = folder / "blobs" / item.content_id
            if blob.is_file() and blob.stat().st_size == item.size:
                sha256 = item.lfs_sha256 or file_sha256(blob)
            else:
                partial = folder / "partial" / f"{item.content_id}.part"
                url = hf_hub_url(
                    repo_id, item.path, repo_type=repo_type, revision=commit, endpoint=endpoint
                )
                download_resumable(url, item, partial, headers, endpoint, retry)
                sha256 = verify_download(partial, item)
                partial.replace(blob)
                log.info("%s: %s bytes, sha256 %s", item.path, f"{item.size:,}", sha256)
            return FetchedFile(item.path, item.size, sha256, item.lfs_sha256 is not None, blob)

        # One download per content: files with identical content share one blob (and must not
        # write one partial file from two threads).
        unique = list({item.content_id: item for item in reversed(chosen)}.values())
        done, errors = _run_all(fetch_one, unique, max_workers)
        by_content = {item.content_id: result for item, result in zip(unique, done, strict=True)}
        fetched = [
            FetchedFile(i.path, i.size, r.sha256, r.lfs, r.local)
            for i in chosen
            if (r := by_content.get(i.content_id)) is not None
        ]
        if errors:
            raise GeolocsftError(
                f"{len(errors)} of {len(chosen)} files of {repo_type} {repo_id}@{commit} could "
                "not be fetched (the others are in the cache; rerun to resume):\n  "
                + "\n  ".join(errors)
            )
    return FetchedRepo(
        repo_id=repo_id,
        repo_type=repo_type,
        requested_revision=requested,
        commit=commit,
        endpoint=without_credentials(endpoint),
        allow_patterns=tuple(allow) if allow else None,
        ignore_patterns=tuple(ignore) if ignore else None,
        files=tuple(sorted(fetched, key=lambda f: f.path)),
        huggingface_hub_version=huggingface_hub.__version__,
    )


def _run_all(
    work: Callable[[RemoteFile], FetchedFile], items: list[RemoteFile], max_workers: int
) -> tuple[list[FetchedFile | None], list[str]]:
    """Run ``work`` on every item (in threads): the results in order (None where it failed)
    and every error message."""
    results: list[FetchedFile | None] = []
    errors: list[str] = []

    def guarded(item: RemoteFile) -> FetchedFile | str:
        try:
            return work(item)
        except GeolocsftError as exc:
            return str(exc)

    with (
        ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool,
        tqdm(total=len(items), desc="fetching", unit="file", mininterval=2.0, disable=None) as bar,
    ):
        for outcome in pool.map(guarded, items):
            bar.update()
            if isinstance(outcome, str):
                errors.append(outcome)
                results.append(None)
            else:
                results.append(outcome)
    return results, errors


def link_files(files: Iterable[FetchedFile], out_dir: Path) -> None:
    """Hard-link (or, across file systems, copy) fetched files to ``out_dir/<repo path>``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in files:
        target = out_dir / PurePosixPath(item.path)
        if out_dir.resolve() not in target.resolve().parents:
            raise GeolocsftError(f"{item.path}: a repo path that escapes {out_dir}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(item.local, target)
        except OSError:
            shutil.copyfile(item.local, target)
