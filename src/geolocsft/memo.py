"""Per-item memo below the stage: per-image work is reused across runs, keyed by content.

Snakemake decides staleness per job, and a rerun job first deletes its outputs, so a stage that
holds 100,000 images would redo all of them when one is added. The stages therefore keep the
result of each item's work in a persistent memo outside ``results/`` (``memo.dir`` in config,
``cache/items`` by default), keyed by everything that shapes that item (the source's content
hash, the settings and the code of the item's work), and rebuild their declared outputs from it:

* :class:`ItemTable`: small per-item records (an image's facts, its feature vector, a sample's
  token counts) in Parquet parts under ``<dir>/<kind>/<version>/``. A lookup reads the parts
  once (columnar, fast) and joins on the key; new records are appended as one new part per run,
  and parts are compacted when there are many.
* :class:`BlobStore`: per-item files (a prepared JPEG, a caption JSON) stored once by their
  sha256 under ``<dir>/blobs/`` and hard-linked into a job's output folder (copied across file
  systems). A blob is read-only, so editing an output in place cannot change the memo.

A reused item is byte-identical to a rebuilt one: the memo stores exactly the bytes or values the
work produced. ``version`` strings come from :func:`memo_version` over the settings and the code
version of the modules that do the item's work (:func:`geolocsft.codegraph.module_code_version`),
so a change to either starts a fresh memo rather than reusing stale items.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from geolocsft.io import canonical_sha256

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Threads that link blobs into an output folder, and links per task.
LINK_THREADS = 2
LINK_BATCH = 2048
#: From this many blobs on, :meth:`BlobStore.present` lists the store instead of a stat each.
PRESENT_BY_LISTING = 1_000
#: Parts of an item table beyond which the next write compacts the smaller ones.
MAX_PARTS = 16
#: The largest parts a compaction leaves as they are (size-tiered, as log-structured stores
#: compact): a rerun's part of 100 records beside a million is merged with the other small
#: parts, and the million are not rewritten.
KEPT_LARGEST_PARTS = MAX_PARTS // 2 - 1
_READ_ATTEMPTS = 5


def memo_version(*parts: Any) -> str:
    """A short digest of everything that shapes an item's result (settings, code versions)."""
    return canonical_sha256(list(parts))[:16]


class ItemTable:
    """Records of one kind of per-item work, keyed by the column ``key``.

    ``<root>/<kind>/<version>/part-*.parquet``; a part is written atomically, so a killed job
    leaves whole parts only, and what it finished before the kill is reused by the next run.
    """

    def __init__(self, root: Path, kind: str, version: str, key: str = "key") -> None:
        self.folder = root / kind / version
        self.key = key

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet")) if self.folder.is_dir() else []

    def load(self, keys: Sequence[str] | pl.Series | None = None) -> pl.DataFrame | None:
        """The stored records (of ``keys`` only, when given), or None when there are none.

        Another job (a part job beside this one) may compact the parts meanwhile: a part that
        vanishes between listing and reading makes the read start again on the new parts.
        """
        return self._on_parts(lambda parts: self._read(parts, keys), None)

    def _on_parts(self, read: Callable[[list[Path]], T], empty: T) -> T:
        """``read(parts)``, again on the new parts when another job compacted them meanwhile
        (a part vanished between listing and reading); ``empty`` when there are none."""
        for attempt in range(_READ_ATTEMPTS):
            parts = self.parts()
            if not parts:
                return empty
            try:
                return read(parts)
            except (FileNotFoundError, pl.exceptions.ComputeError):
                if attempt == _READ_ATTEMPTS - 1 or all(p.exists() for p in parts):
                    raise
        return empty

    def _read(self, parts: list[Path], keys: Sequence[str] | pl.Series | None) -> pl.DataFrame:
        """The first record of each (wanted) key, in the parts' order. The keys are read first
        and the records then taken by row: a join would copy every wanted record once more (a
        million 128-float vectors: 0.5 GB), and when every record is wanted nothing is copied."""
        stored = pl.scan_parquet(parts).select(self.key).collect()[self.key]
        keep = stored.is_first_distinct()
        if keys is not None:
            wanted = pl.Series(self.key, keys, dtype=pl.String).unique()
            keep = keep & stored.is_in(wanted.implode())
        records = pl.scan_parquet(parts)
        if keep.all():
            return records.collect()
        rows = keep.arg_true()
        return (
            records.with_row_index("__row")
            .filter(pl.col("__row").is_in(rows.implode()))
            .drop("__row")
            .collect()
        )

    def count_missing(self, keys: pl.Series) -> int:
        """How many distinct ``keys`` have no record (reads the key column only)."""
        wanted = keys.cast(pl.String).unique().to_frame(self.key)

        def missing(parts: list[Path]) -> int:
            stored = pl.scan_parquet(parts).select(self.key)
            return wanted.lazy().join(stored, on=self.key, how="anti").collect().height

        return self._on_parts(missing, wanted.height)

    def add(self, records: pl.DataFrame) -> None:
        """Store new records (one new part; compacted when there are many)."""
        if records.height == 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        part = self.folder / f"part-{uuid.uuid4().hex}.parquet"
        tmp = part.with_name(f".{part.name}.tmp")
        records.write_parquet(tmp)
        tmp.replace(part)
        if len(self.parts()) > MAX_PARTS:
            self.compact()

    def compact(self, keep_largest: int = KEPT_LARGEST_PARTS) -> None:
        """Merge the parts into one, all but the ``keep_largest`` largest (0: every part).

        One job compacts at a time (a lock file); a job that finds the lock taken leaves it to
        the other. Readers see the old parts or the merged one."""
        with (self.folder / ".compact.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            by_size = sorted(self.parts(), key=lambda part: (part.stat().st_size, part.name))
            parts = by_size[: max(len(by_size) - keep_largest, 0)]
            if len(parts) < 2:
                return
            merged = pl.scan_parquet(parts).unique(self.key, keep="first").collect()
            target = self.folder / f"part-{uuid.uuid4().hex}.parquet"
            tmp = target.with_name(f".{target.name}.tmp")
            merged.write_parquet(tmp)
            tmp.replace(target)
            for part in parts:
                part.unlink(missing_ok=True)
        log.info("compacted %d parts of %s (%d records)", len(parts), self.folder, merged.height)


class BlobStore:
    """Files stored once by content (sha256) and linked into output folders."""

    def __init__(self, root: Path) -> None:
        self.root = root / "blobs"
        self._folders: set[str] = set()  # shard folders known to exist (in this process)

    def path(self, sha256: str) -> Path:
        return Path(self.file(sha256))

    def file(self, sha256: str) -> str:
        """:meth:`path` as a string, for the hot paths (millions of files)."""
        return f"{self.root}/{sha256[:2]}/{sha256}"

    def put(self, data: bytes) -> str:
        """Store ``data`` (if new) as a read-only file; return its sha256.

        Written to a temporary name and renamed, so a reader never sees part of a blob. Millions
        of small files go through here (every caption, every media file): the hot path works on
        strings and ``os`` calls, not pathlib or :mod:`tempfile` (each cost more than the write).
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self.file(digest)
        folder = path.rpartition("/")[0]
        if os.path.exists(path):  # noqa: PTH110 (hot path)
            return digest
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)  # noqa: PTH103 (hot path)
            self._folders.add(folder)
        # Unique among the writers of this file: processes (pid) and their threads (ident).
        tmp = f"{folder}/.{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # left by a killed writer that had this pid and thread
            os.unlink(tmp)  # noqa: PTH108 (hot path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, 0o444)
            finally:
                os.close(fd)
            os.replace(tmp, path)  # noqa: PTH105 (hot path)
        except BaseException:
            os.unlink(tmp)  # noqa: PTH108 (hot path)
            raise
        return digest

    def has(self, sha256: str) -> bool:
        return os.path.isfile(self.file(sha256))  # noqa: PTH113 (hot path)

    def present(self, digests: Sequence[str]) -> list[bool]:
        """:meth:`has` of each digest. Many are answered from one listing of the store's
        folders (no stat per blob: a rerun checks every media file it will link)."""
        if len(digests) < PRESENT_BY_LISTING:
            return [self.has(digest) for digest in digests]
        stored: set[str] = set()
        for shard in {digest[:2] for digest in digests}:
            try:
                with os.scandir(f"{self.root}/{shard}") as entries:
                    stored.update(e.name for e in entries if not e.name.startswith("."))
            except FileNotFoundError:
                continue
        return [digest in stored for digest in digests]

    def link_all(self, folder: Path, blobs_and_paths: Iterable[tuple[str, str]]) -> None:
        """Put each blob at its path relative to ``folder`` (as :meth:`link`), each subfolder
        created once. Links are made in :data:`LINK_THREADS` threads, a batch at a time (the
        kernel does the work and the GIL is released: 75k links take half the time in two
        threads as in one, BENCHMARKS.md "incremental")."""
        pairs = iter(blobs_and_paths)
        with ThreadPoolExecutor(max_workers=LINK_THREADS) as pool:
            running: list[Future[None]] = []
            while batch := list(itertools.islice(pairs, LINK_BATCH)):
                targets = []
                for sha256, relpath in batch:
                    destination = f"{folder}/{relpath}"
                    parent = destination.rpartition("/")[0]
                    if parent not in self._folders:
                        os.makedirs(parent, exist_ok=True)  # noqa: PTH103 (hot path)
                        self._folders.add(parent)
                    targets.append((sha256, destination))
                running.append(pool.submit(self._link_batch, targets))
                if len(running) > 2 * LINK_THREADS:  # a bounded queue: pairs may be millions
                    running.pop(0).result()
            for future in running:
                future.result()

    def _link_batch(self, targets: list[tuple[str, str]]) -> None:
        for sha256, destination in targets:
            self.link_to(sha256, destination)

    def link(self, sha256: str, destination: Path) -> None:
        """Put the blob at ``destination`` (a hard link, or a copy across file systems)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        self.link_to(sha256, str(destination))

    def link_to(self, sha256: str, destination: str) -> None:
        """:meth:`link` into an existing folder, on strings and ``os`` calls (the hot path of
        every rebuilt caption and media folder). An existing file there is replaced."""
        source = self.file(sha256)
        try:
            os.link(source, destination)
        except FileExistsError:
            os.unlink(destination)  # noqa: PTH108 (hot path)
            os.link(source, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copyfile(source, destination)  # another file system
