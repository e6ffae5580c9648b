"""Datasets and models from the Hugging Face Hub, fetched resumably and unpacked for ingest.

:func:`fetch_repo` resolves a revision to its commit with ``huggingface_hub`` (``HfApi``), lists
the commit's files and downloads those matching the allow patterns into a persistent cache
outside ``results/`` (``cache/hub/<type>s/<owner>--<name>/``), so that Snakemake deleting the
outputs of a failed or killed job never throws received bytes away:

* every file is streamed through ``huggingface_hub``'s HTTP session (``HF_ENDPOINT``,
  ``HF_TOKEN``, its user agent) into ``partial/<content id>.part``, written to disk as it arrives;
  a later run sends ``Range: bytes=<received>-`` and appends the rest (a ``200`` answer to a range
  request restarts the file). ``huggingface_hub.snapshot_download`` deletes a partial file when a
  download fails, so a killed job would start big files from zero again: that is why the bytes
  are fetched here;
* a complete file is checked against the Hub's checksum (sha256 of LFS files, git blob id of
  the others) before it is moved to ``blobs/<content id>``; files already there are never
  downloaded again, whichever revision asks for them;
* the record names the requested revision, the commit it resolved to and every file with its
  size and sha256.

:func:`unpack` turns the fetched files into the layout ingest reads: an image folder and a
metadata table (``image_id, file, lat, lon, source_file, source_row``). It understands Parquet
shards with an image column (the ``datasets`` ``Image`` feature, a struct of ``bytes`` and
``path``, or plain binary) and image archives (zip, tar, tar.gz, ...) or image files with a
metadata table (CSV, TSV or Parquet) in the repo or in an archive. The output is deterministic
(same input, same bytes) and every row of the source is kept: rows with unusable coordinates or
images are written as they are, for ingest to quarantine (or, with ``on_bad_input: fail``, to stop
the run); problems unpacking can see (undecodable image bytes, one id for different images) are
logged with their file and row, or stop the run under ``fail``.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import polars as pl
from tqdm import tqdm

from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.images import IMAGE_SUFFIXES
from geolocsft.io import atomic_write_json, file_sha256
from geolocsft.settings import from_config
from geolocsft.tables import (
    ID_COLUMN_CANDIDATES,
    LAT_COLUMN_CANDIDATES,
    LON_COLUMN_CANDIDATES,
    ColumnMap,
    normalise_image_id,
    read_metadata_table,
    resolve_columns,
    unsafe_id_reason,
)

log = logging.getLogger(__name__)

RepoType = Literal["dataset", "model"]
UnpackFormat = Literal["archives", "parquet"]
BadInputPolicy = Literal["quarantine", "fail"]
T = TypeVar("T")

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "jpeg", "png", "photo", "picture")
# Columns of the metadata table that unpack writes (and the column map ingest reads it with).
ACQUIRED_COLUMNS = {"id": "image_id", "lat": "lat", "lon": "lon", "file": "file"}
# Pillow format -> file extension of extracted images.
_FORMAT_SUFFIX = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "TIFF": ".tif",
    "BMP": ".bmp",
}
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)


def repo_slug(repo_id: str) -> str:
    """A folder name for a repo id: ``paidaixing/PIG_R1`` → ``paidaixing--PIG_R1``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", repo_id)


def repo_cache_dir(cache_dir: Path, repo_type: str, repo_id: str) -> Path:
    """The cache folder of one repo: ``<cache_dir>/<repo_type>s/<slug>``."""
    return Path(cache_dir) / f"{repo_type}s" / repo_slug(repo_id)


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file (the Hub's ``oid`` of a file not stored with LFS)."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Fetching


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


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per request (transient network errors, 408/429/5xx) and the backoff between
    them (doubling, at most ``max_backoff_s``). An attempt that received bytes resets the count."""

    CONFIG_SECTION: ClassVar[str] = "acquire"

    max_attempts: int
    backoff_s: float
    max_backoff_s: float

    def wait(self, attempt: int) -> None:
        time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


def _short(exc: BaseException) -> str:
    """The first line of an exception's message (huggingface_hub appends help links)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _is_transient(exc: BaseException) -> bool:
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status in _RETRY_STATUS
    return False


def _hub_error(exc: BaseException, what: str, endpoint: str) -> GeolocsftError:
    """A user-facing error for a failed Hub call."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return GeolocsftError(
            f"{what}: HF_HUB_OFFLINE is set, but fetching from the Hub needs the network "
            "(acquisition runs on the submit host: unset HF_HUB_OFFLINE there)"
        )
    if isinstance(exc, GatedRepoError):
        return GeolocsftError(
            f"{what}: the repo is gated on {endpoint}: accept its terms on the Hub and set "
            "HF_TOKEN (or run `hf auth login`)"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return GeolocsftError(
            f"{what}: repository not found on {endpoint} (check repo_id and repo_type; a private "
            "repo needs HF_TOKEN)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return GeolocsftError(f"{what}: the revision does not exist on {endpoint}")
    if isinstance(exc, RemoteEntryNotFoundError):
        return GeolocsftError(f"{what}: the file does not exist on {endpoint}")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " (set HF_TOKEN for a private or gated repo)" if status in (401, 403) else ""
        return GeolocsftError(f"{what}: HTTP {status} from {endpoint}{hint} ({_short(exc)})")
    return GeolocsftError(
        f"{what}: cannot reach {endpoint} ({_short(exc)}); check the network, HF_ENDPOINT and "
        "proxies, then rerun"
    )


def _with_retries(call: Callable[[], T], what: str, endpoint: str, retry: RetryPolicy) -> T:
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            if not _is_transient(exc) or attempt >= retry.max_attempts:
                raise _hub_error(exc, what, endpoint) from exc
            log.warning("%s: %s; retry %d/%d", what, _short(exc), attempt, retry.max_attempts - 1)
            retry.wait(attempt)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
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


def _list_files(
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
        _with_retries(listing, f"listing the files of {repo_id}@{commit}", endpoint, retry),
        key=lambda f: f.path,
    )
    atomic_write_json(cached, [vars(f) for f in files])
    return files


def _download(
    url: str,
    remote: RemoteFile,
    partial: Path,
    headers: Mapping[str, str],
    endpoint: str,
    retry: RetryPolicy,
) -> None:
    """Stream ``url`` into ``partial`` until it holds ``remote.size`` bytes, resuming with Range."""
    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    what = f"downloading {remote.path} ({remote.size:,} bytes)"
    failures = 0  # consecutive failed attempts that received nothing
    while True:
        have = partial.stat().st_size if partial.exists() else 0
        if have > remote.size:
            log.warning("%s: partial file %s is too long; starting again", remote.path, partial)
            partial.unlink()
            have = 0
        if have == remote.size:
            return
        request_headers = {**headers, "Accept-Encoding": "identity"}
        if have:
            request_headers["Range"] = f"bytes={have}-"
            log.info("%s: resuming at byte %s of %s", remote.path, f"{have:,}", f"{remote.size:,}")
        received = 0
        try:
            with http_stream_backoff(
                "GET",
                url,
                headers=request_headers,
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                max_retries=0,
                retry_on_exceptions=(),
                retry_on_status_codes=(),
            ) as response:
                hf_raise_for_status(response)
                mode = "ab"
                if have and response.status_code == 200:
                    log.warning("%s: the server ignored the Range request; starting again", url)
                    mode = "wb"
                elif have and not response.headers.get("Content-Range", "").startswith(
                    f"bytes {have}-"
                ):
                    raise GeolocsftError(
                        f"{what}: asked for bytes {have}- but the server answered with "
                        f"Content-Range {response.headers.get('Content-Range')!r}"
                    )
                # Unbuffered: every chunk is on disk as soon as it arrived, even if the process
                # is killed a moment later.
                with partial.open(mode, buffering=0) as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        received += len(chunk)
        except GeolocsftError:
            raise
        except Exception as exc:
            if not _is_transient(exc):
                raise _hub_error(exc, what, endpoint) from exc
            failures = 1 if received else failures + 1
            if failures >= retry.max_attempts:
                kept = partial.stat().st_size if partial.exists() else 0
                raise GeolocsftError(
                    f"{what} from {endpoint} failed ({_short(exc)}) after "
                    f"{retry.max_attempts} attempts; {kept:,} bytes are kept in {partial} and "
                    "the next run resumes from there"
                ) from exc
            log.warning(
                "%s: %s after %s new bytes; retrying (%d/%d)",
                remote.path,
                _short(exc),
                f"{received:,}",
                failures,
                retry.max_attempts - 1,
            )
            retry.wait(failures)
            continue
        if received == 0:
            raise GeolocsftError(f"{what}: the server sent an empty body; rerun to retry")


def _verify(partial: Path, remote: RemoteFile) -> str:
    """Check a complete download against the Hub's checksum; return its sha256."""
    sha256 = file_sha256(partial)
    actual = sha256 if remote.lfs_sha256 else git_blob_sha1(partial)
    if actual != remote.content_id:
        partial.unlink()
        kind = "sha256" if remote.lfs_sha256 else "git blob id"
        raise GeolocsftError(
            f"{remote.path}: the downloaded file's {kind} {actual} is not the Hub's "
            f"{remote.content_id}; the download was deleted, rerun to fetch it again"
        )
    return sha256


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

    with _locked(folder):
        if COMMIT_RE.match(requested):
            commit = requested
        else:
            info = _with_retries(
                lambda: api.repo_info(repo_id, repo_type=repo_type, revision=requested),
                f"resolving {repo_type} {repo_id}@{requested}",
                endpoint,
                retry,
            )
            if not info.sha:
                raise GeolocsftError(f"{repo_id}@{requested}: {endpoint} reported no commit sha")
            commit = info.sha
        log.info("%s %s: revision %s is commit %s", repo_type, repo_id, requested, commit)
        remote = _list_files(api, repo_id, repo_type, commit, folder, endpoint, retry)
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
                _download(url, item, partial, headers, endpoint, retry)
                sha256 = _verify(partial, item)
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
        endpoint=_without_credentials(endpoint),
        allow_patterns=tuple(allow) if allow else None,
        ignore_patterns=tuple(ignore) if ignore else None,
        files=tuple(sorted(fetched, key=lambda f: f.path)),
        huggingface_hub_version=huggingface_hub.__version__,
    )


def _without_credentials(url: str) -> str:
    """A URL without ``user:password@`` (records never hold secrets)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


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


# ---------------------------------------------------------------------------------------------
# Unpacking


@dataclass(frozen=True)
class AcquireColumns(ColumnMap):
    """Ingest's column map plus the Parquet image column (``None``: ``image`` or detected)."""

    image: str | None = None


@dataclass(frozen=True)
class UnpackSettings:
    """How a fetched repo becomes an image folder and a metadata table (see config/README.md)."""

    CONFIG_SECTION: ClassVar[str] = "acquire.datasets.*"

    format: UnpackFormat
    #: repo paths (fnmatch patterns, case-insensitive) of the Parquet shards, or of the image
    #: archives and image files; None = by format
    images: tuple[str, ...] | None
    #: patterns of the metadata tables (repo files, or members of the archives); None = every
    #: CSV/TSV/Parquet file that is not an image source (archives format only)
    metadata: tuple[str, ...] | None
    columns: AcquireColumns
    #: ``ingest.on_bad_input``
    on_bad_input: BadInputPolicy = field(metadata={"key": None})

    def __post_init__(self) -> None:
        # Config blocks give lists (or one pattern) and a columns mapping.
        for name in ("images", "metadata"):
            value = getattr(self, name)
            if value is not None:
                patterns = (value,) if isinstance(value, str) else tuple(value)
                object.__setattr__(self, name, patterns)
        if isinstance(self.columns, Mapping):
            object.__setattr__(self, "columns", AcquireColumns(**self.columns))

    @classmethod
    def from_config(cls, block: Mapping[str, Any], on_bad_input: BadInputPolicy) -> UnpackSettings:
        """From an ``acquire.datasets.<name>`` config block."""
        return from_config(cls, block, "acquire.datasets", on_bad_input=on_bad_input)


@dataclass(frozen=True)
class Problem:
    """A row or image unpacking found unusable (ingest gets the row and reports it too)."""

    source: str
    row: int | None
    image_id: str | None
    reason: str
    detail: str

    def describe(self) -> str:
        where = f"{self.source} row {self.row}" if self.row is not None else self.source
        shown = f" (id {self.image_id!r})" if self.image_id else ""
        return f"{where}{shown}: {self.reason}: {self.detail}"


@dataclass
class UnpackResult:
    rows: int = 0
    images: int = 0
    rows_without_coordinates: int = 0
    problems: list[Problem] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "images": self.images,
            "rows_without_coordinates": self.rows_without_coordinates,
            "problems": dict(sorted(Counter(p.reason for p in self.problems).items())),
        }


def _matches(path: str, patterns: Iterable[str]) -> bool:
    lowered = path.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _image_suffix(data: bytes) -> str | None:
    """The extension of an image Pillow recognises from its header, or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt = image.format or ""
    except Image.DecompressionBombError:
        return ".img"  # an image, too large to open: ingest rejects it as decompression_bomb
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    if fmt in _FORMAT_SUFFIX:
        return _FORMAT_SUFFIX[fmt]
    known = [ext for ext, name in Image.registered_extensions().items() if name == fmt]
    return sorted(known)[0] if known else ".img"


def _pick_column(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str]
) -> str | None:
    if wanted is not None:
        return wanted if wanted in columns else None
    by_lower = {c.strip().lower(): c for c in columns}
    return next((by_lower[name] for name in candidates if name in by_lower), None)


class _ImageWriter:
    """Writes images into the output folder under unique names, once per content."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.by_name: dict[str, tuple[str, str]] = {}  # name -> (sha256, where it came from)
        self.written = 0

    def add(self, name: str, data: bytes, origin: str) -> tuple[str, str | None]:
        """Write ``data`` as ``name`` (or a ``~N`` variant when another image took the name).

        Returns the name used and, when the name was taken by different bytes, where those
        came from.
        """
        digest = hashlib.sha256(data).hexdigest()
        stem, suffix = name[: -len(PurePosixPath(name).suffix) or None], PurePosixPath(name).suffix
        candidate, number, clash = name, 1, None
        while candidate in self.by_name:
            if self.by_name[candidate][0] == digest:
                return candidate, clash
            clash = clash or self.by_name[candidate][1]
            number += 1
            candidate = f"{stem}~{number}{suffix}"
        (self.folder / candidate).write_bytes(data)
        self.by_name[candidate] = (digest, origin)
        self.written += 1
        return candidate, clash


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN
        return ""
    return str(value)


def _coordinates_missing(lat: str, lon: str) -> bool:
    def bad(text: str) -> bool:
        try:
            value = float(text)
        except ValueError:
            return True
        return value != value or value in (float("inf"), float("-inf"))

    return bad(lat) or bad(lon)


def _unpack_parquet(
    files: Mapping[str, Path],
    writer: _ImageWriter,
    settings: UnpackSettings,
    result: UnpackResult,
) -> list[dict[str, Any]]:
    patterns = settings.images or ("*.parquet",)
    shards = [p for p in sorted(files) if _matches(p, patterns)]
    if not shards:
        raise GeolocsftError(
            f"no Parquet shard among the fetched files matches images: {list(patterns)} "
            f"(fetched: {', '.join(sorted(files)) or 'nothing'})"
        )
    cols = settings.columns
    rows: list[dict[str, Any]] = []
    for shard in shards:
        path = files[shard]
        try:
            schema = pl.read_parquet_schema(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputTableError(f"{shard}: cannot read the Parquet shard: {exc}") from exc
        names = list(schema)

        def image_like(name: str, schema: Mapping[str, Any] = schema) -> bool:
            dtype = schema[name]
            if dtype == pl.Binary:
                return True
            return isinstance(dtype, pl.Struct) and "bytes" in [f.name for f in dtype.fields]

        if cols.image is not None:
            image_col = cols.image if cols.image in names else None
        else:
            # A column with a usual name that holds bytes, else the only column that does.
            by_lower = {n.strip().lower(): n for n in names if image_like(n)}
            named = [by_lower[c] for c in IMAGE_COLUMN_CANDIDATES if c in by_lower]
            found = [n for n in names if image_like(n)]
            image_col = named[0] if named else (found[0] if len(found) == 1 else None)
        shown = ", ".join(f"{n} ({schema[n]})" for n in names)
        if image_col is None or not image_like(image_col):
            asked = (
                f"column {cols.image!r} (columns.image in config)" if cols.image else "image column"
            )
            raise InputTableError(
                f"{shard}: no usable {asked}: it must hold image bytes (binary, or a struct with "
                f"'bytes' and 'path' like the datasets Image feature). The shard's columns are: "
                f"{shown}"
            )
        others = [n for n in names if n != image_col]
        lat_col = _pick_column(others, cols.lat, LAT_COLUMN_CANDIDATES)
        lon_col = _pick_column(others, cols.lon, LON_COLUMN_CANDIDATES)
        id_col = _pick_column(others, cols.id, ID_COLUMN_CANDIDATES)
        problems = []
        for role, found_col, configured, candidates in (
            ("lat", lat_col, cols.lat, LAT_COLUMN_CANDIDATES),
            ("lon", lon_col, cols.lon, LON_COLUMN_CANDIDATES),
        ):
            if found_col is None:
                problems.append(
                    f"column {configured!r} (columns.{role} in config) is not in the shard"
                    if configured
                    else f"no {role} column (looked for {', '.join(candidates)}; "
                    f"set columns.{role})"
                )
        if cols.id is not None and id_col is None:
            problems.append(f"column {cols.id!r} (columns.id in config) is not in the shard")
        if problems:
            raise InputTableError(f"{shard}: " + "; ".join(problems) + f". Columns: {shown}")
        try:
            wanted = [c for c in (image_col, id_col, lat_col, lon_col) if c]
            table = pl.read_parquet(path, columns=wanted)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputTableError(f"{shard}: cannot read the Parquet shard: {exc}") from exc
        is_struct = isinstance(schema[image_col], pl.Struct)
        images = table[image_col].to_list()
        ids = table[id_col].cast(pl.String).to_list() if id_col else [None] * table.height
        lats = table[str(lat_col)].cast(pl.String).to_list()
        lons = table[str(lon_col)].cast(pl.String).to_list()
        shard_stem = PurePosixPath(shard).name.split(".")[0]
        for index, (value, raw_id, raw_lat, raw_lon) in enumerate(
            zip(images, ids, lats, lons, strict=True)
        ):
            row = index + 1
            data, inner_path = (
                ((value or {}).get("bytes"), (value or {}).get("path"))
                if is_struct
                else (value, None)
            )
            if data is None and inner_path:
                # The Image feature may point at a file of the repo instead of holding bytes.
                for candidate in (inner_path, str(PurePosixPath(shard).parent / inner_path)):
                    if candidate in files:
                        data = files[candidate].read_bytes()
                        break
            image_id = _text(raw_id).strip()
            if not image_id:
                image_id = (
                    PurePosixPath(inner_path).name if inner_path else f"{shard_stem}-{row:06d}"
                )
            lat, lon = _text(raw_lat), _text(raw_lon)
            file_name = ""
            safe = normalise_image_id(image_id)
            origin = f"{shard} row {row}"
            if data is None:
                result.problems.append(
                    Problem(shard, row, image_id, "missing_image", "the image cell holds no bytes")
                )
            elif unsafe_id_reason(safe) is None:
                suffix = _image_suffix(data)
                if suffix is None:
                    result.problems.append(
                        Problem(
                            shard,
                            row,
                            image_id,
                            "undecodable",
                            f"the {len(data):,} image bytes are not an image Pillow can read "
                            f"(they start with {data[:8]!r})",
                        )
                    )
                name, clash = writer.add(safe + (suffix or ".bin"), data, origin)
                if clash:
                    result.problems.append(
                        Problem(
                            shard,
                            row,
                            image_id,
                            "duplicate_id",
                            f"the id is also used for a different image ({clash})",
                        )
                    )
                file_name = f"images/{name}"
            rows.append(
                {
                    "image_id": image_id,
                    "file": file_name,
                    "lat": lat,
                    "lon": lon,
                    "source_file": shard,
                    "source_row": row,
                }
            )
    return rows


def _archive_members(path: Path, label: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """(member name, reader) of every regular file of a zip or tar archive, sorted by name."""
    errors = (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error)

    def guarded(read: Callable[[], bytes], name: str) -> Callable[[], bytes]:
        def call() -> bytes:
            try:
                return read()
            except errors as exc:
                raise GeolocsftError(f"{label}: cannot extract {name}: {exc}") from exc

        return call

    try:
        if path.name.lower().endswith(".zip") or zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zipped:
                for info in sorted(zipped.infolist(), key=lambda i: i.filename):
                    if not info.is_dir():
                        read_info = functools.partial(zipped.read, info)
                        yield info.filename, guarded(read_info, info.filename)
            return
        with tarfile.open(path, mode="r:*") as tarred:
            members = sorted((m for m in tarred.getmembers() if m.isfile()), key=lambda m: m.name)
            for member in members:

                def read(member: tarfile.TarInfo = member) -> bytes:
                    handle = tarred.extractfile(member)
                    return handle.read() if handle is not None else b""

                yield member.name, guarded(read, member.name)
    except errors as exc:
        raise GeolocsftError(f"{label}: cannot read the archive: {exc}") from exc


def _unpack_archives(
    files: Mapping[str, Path],
    writer: _ImageWriter,
    settings: UnpackSettings,
    result: UnpackResult,
    scratch: Path,
) -> list[dict[str, Any]]:
    image_patterns = settings.images or (
        *(f"*{s}" for s in ARCHIVE_SUFFIXES),
        *(f"*{s}" for s in sorted(IMAGE_SUFFIXES)),
    )
    table_patterns = settings.metadata or tuple(f"*{s}" for s in TABLE_SUFFIXES)
    sources = [p for p in sorted(files) if _matches(p, image_patterns)]
    tables: list[tuple[str, Path]] = [
        (p, files[p])
        for p in sorted(files)
        if p not in sources and _matches(p, table_patterns) and p.lower().endswith(TABLE_SUFFIXES)
    ]
    if not sources:
        raise GeolocsftError(
            f"no image archive or image file among the fetched files matches images: "
            f"{list(image_patterns)} (fetched: {', '.join(sorted(files)) or 'nothing'})"
        )
    skipped = 0
    for source in sources:
        entries: Iterable[tuple[str, Callable[[], bytes]]]
        if _is_archive(source):
            entries = _archive_members(files[source], source)
        else:
            entries = [(source, files[source].read_bytes)]
        for member, read in entries:
            member_path = PurePosixPath(member.replace("\\", "/"))
            origin = f"{source}:{member}" if _is_archive(source) else source
            if "__MACOSX" in member_path.parts or member_path.name.startswith("."):
                skipped += 1
                continue
            suffix = member_path.suffix.lower()
            if _is_archive(source) and suffix in TABLE_SUFFIXES:
                if _matches(member, table_patterns):
                    extracted = scratch / f"{len(tables):04d}{suffix}"
                    extracted.write_bytes(read())
                    tables.append((f"{source}:{member}", extracted))
                continue
            if suffix not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            name = member_path.name
            data = read()
            used, clash = writer.add(name, data, origin)
            if used != name:
                raise GeolocsftError(
                    f"two different images are named {name}: {clash} and {origin}; ingest finds "
                    "images by file name, so narrow allow_patterns/images to one copy"
                )
    if skipped:
        log.info("skipped %d archive members that are not images or tables", skipped)
    if not tables:
        raise GeolocsftError(
            f"no metadata table (CSV, TSV or Parquet) matches metadata: {list(table_patterns)} "
            "among the fetched files or the archives' members; set acquire.datasets.<name>."
            "metadata to the table's path"
        )
    cols = settings.columns
    rows: list[dict[str, Any]] = []
    for label, path in tables:
        try:
            table = read_metadata_table(path)
            found = resolve_columns(table.columns, cols, label)
        except InputTableError as exc:
            raise InputTableError(str(exc).replace(str(path), label)) from None
        ids = table[found.id].to_list() if found.id else [None] * table.height
        paths = table[found.file].to_list() if found.file else [None] * table.height
        lats, lons = table[str(found.lat)].to_list(), table[str(found.lon)].to_list()
        for index, (raw_id, raw_file, lat, lon) in enumerate(
            zip(ids, paths, lats, lons, strict=True)
        ):
            file_name = PurePosixPath(_text(raw_file).replace("\\", "/")).name
            rows.append(
                {
                    "image_id": _text(raw_id).strip() or file_name,
                    "file": f"images/{file_name}" if file_name else "",
                    "lat": _text(lat),
                    "lon": _text(lon),
                    "source_file": label,
                    "source_row": index + 1,
                }
            )
    return rows


def unpack(
    files: Mapping[str, Path],
    images_dir: Path,
    metadata_csv: Path,
    settings: UnpackSettings,
) -> UnpackResult:
    """Write the images of ``files`` (repo path → local file) into ``images_dir`` and one row per
    source row into ``metadata_csv`` (columns ``image_id, file, lat, lon, source_file,
    source_row``; ``file`` relative to the table's folder). See the module docstring."""
    result = UnpackResult()
    writer = _ImageWriter(images_dir)
    if settings.format == "parquet":
        if settings.metadata:
            raise GeolocsftError(
                "metadata must be null with format: parquet (the shards hold id, lat and lon)"
            )
        rows = _unpack_parquet(files, writer, settings, result)
    elif settings.format == "archives":
        with tempfile.TemporaryDirectory(prefix="geolocsft-unpack-") as scratch:
            rows = _unpack_archives(files, writer, settings, result, Path(scratch))
    else:
        raise GeolocsftError(f"format must be 'archives' or 'parquet', not {settings.format!r}")
    result.rows = len(rows)
    result.images = writer.written
    result.rows_without_coordinates = sum(_coordinates_missing(r["lat"], r["lon"]) for r in rows)
    if not rows:
        raise GeolocsftError("the fetched dataset has no rows")
    if result.problems and settings.on_bad_input == "fail":
        shown = "\n  ".join(p.describe() for p in result.problems[:50])
        more = len(result.problems) - 50
        raise GeolocsftError(
            f"{len(result.problems)} unusable rows (ingest.on_bad_input = fail):\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    for problem in result.problems[:20]:
        log.warning("%s (ingest will quarantine the row)", problem.describe())
    if len(result.problems) > 20:
        log.warning("... and %d more unusable rows", len(result.problems) - 20)
    if result.rows_without_coordinates:
        log.warning(
            "%d rows have no usable coordinates (ingest quarantines them as missing_coordinates)",
            result.rows_without_coordinates,
        )
    metadata_csv.parent.mkdir(parents=True, exist_ok=True)
    schema = {
        "image_id": pl.String,
        "file": pl.String,
        "lat": pl.String,
        "lon": pl.String,
        "source_file": pl.String,
        "source_row": pl.Int64,
    }
    pl.DataFrame(rows, schema=schema).write_csv(metadata_csv)
    log.info(
        "unpacked %d rows and %d images into %s and %s",
        result.rows,
        result.images,
        images_dir,
        metadata_csv,
    )
    return result


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
