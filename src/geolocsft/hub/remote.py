"""Which files a Hub repo holds at a revision: the commit it resolves to and the commit's listing.

A revision (branch, tag or commit) is resolved to its 40-hex commit once per fetch; the commit's
file listing (path, size, git blob id, LFS sha256) is cached per commit under the repo's cache
folder (``trees/<commit>.json``), since a commit never changes. A repo's cache folder is locked
while a process fetches into it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from geolocsft.errors import GeolocsftError
from geolocsft.hub.retry import RetryPolicy, with_retries
from geolocsft.io import atomic_write_json

log = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def repo_slug(repo_id: str) -> str:
    """A folder name for a repo id: ``paidaixing/PIG_R1`` → ``paidaixing--PIG_R1``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", repo_id)


def repo_cache_dir(cache_dir: Path, repo_type: str, repo_id: str) -> Path:
    """The cache folder of one repo: ``<cache_dir>/<repo_type>s/<slug>``."""
    return Path(cache_dir) / f"{repo_type}s" / repo_slug(repo_id)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a commit, as the Hub's tree listing describes it."""

    path: str
    size: int
    git_oid: str
    lfs_sha256: str | None

    @property
    def content_id(self) -> str:
        """The id the Hub checks the content with: sha256 for LFS files, git blob id otherwise."""
        return self.lfs_sha256 or self.git_oid


@contextlib.contextmanager
def repo_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on a repo's cache folder (two jobs never write one file)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process downloading into %s", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def list_commit_files(
    api: Any,
    repo_id: str,
    repo_type: str,
    commit: str,
    folder: Path,
    endpoint: str,
    retry: RetryPolicy,
) -> list[RemoteFile]:
    """The commit's files (cached per commit: a commit never changes)."""
    cached = folder / "trees" / f"{commit}.json"
    if cached.is_file():
        return [RemoteFile(**entry) for entry in json.loads(cached.read_text())]
    from huggingface_hub.hf_api import RepoFile

    def listing() -> list[RemoteFile]:
        return [
            RemoteFile(
                path=entry.path,
                size=entry.size,
                git_oid=entry.blob_id,
                lfs_sha256=entry.lfs.sha256 if entry.lfs is not None else None,
            )
            for entry in api.list_repo_tree(
                repo_id, recursive=True, revision=commit, repo_type=repo_type
            )
            if isinstance(entry, RepoFile)
        ]

    files = sorted(
        with_retries(listing, f"listing the files of {repo_id}@{commit}", endpoint, retry),
        key=lambda f: f.path,
    )
    atomic_write_json(cached, [vars(f) for f in files])
    return files


def resolve_commit(
    api: Any, repo_id: str, repo_type: str, requested: str, endpoint: str, retry: RetryPolicy
) -> str:
    """The commit a revision (branch, tag or commit) points to now."""
    if COMMIT_RE.match(requested):
        return requested
    info = with_retries(
        lambda: api.repo_info(repo_id, repo_type=repo_type, revision=requested),
        f"resolving {repo_type} {repo_id}@{requested}",
        endpoint,
        retry,
    )
    if not info.sha:
        raise GeolocsftError(f"{repo_id}@{requested}: {endpoint} reported no commit sha")
    commit: str = info.sha
    return commit


def without_credentials(url: str) -> str:
    """A URL without ``user:password@`` (records never hold secrets)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))
