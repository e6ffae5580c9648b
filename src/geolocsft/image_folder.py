"""A dataset's image folder: every image under it (nested folders too), ids, and a listing digest.

Corpora such as MP16 or OSV-5M ship their images in nested folders (``e4/5b/3413224425.jpg``,
``train/00/123456.jpg``), so the folder is read recursively. Hidden files and folders (names
starting with ``.``: ``.DS_Store``, macOS ``._x.jpg`` shadows, ``.snakemake_timestamp``) and files
without an image extension are not images.

**Ids from relative paths.** An image found without a metadata row naming it (EXIF GPS mode)
gets its id from its path relative to the folder: the folders and the file's stem joined with
``__`` (:data:`ID_PART_SEPARATOR`): ``a/b/c.jpg`` -> ``a__b__c``. A file directly in the folder
keeps its stem as before (``c.jpg`` -> ``c``). Ids stay single file names (per-image outputs
are named after them), and the id depends on the path alone, so it never changes when other
images are added. Two paths that map to one id (``a/b__c.jpg`` and ``a__b/c.jpg``) are reported
as a duplicate id by ingest.

**Listing digest.** :func:`listing_digests` hashes the sorted (relative path, size, mtime) of
every image, one stat per file and no reads: the workflow passes it to the ingest jobs as a
param, so adding, removing or changing an image anywhere in the tree reruns them, while
Snakemake itself never holds a list of a million files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from geolocsft.errors import InputTableError
from geolocsft.images import IMAGE_SUFFIXES
from geolocsft.layout import part_of
from geolocsft.tables import name_suffix, normalise_image_id

log = logging.getLogger(__name__)

#: Joins the folders and the stem of a nested image's relative path into its id.
ID_PART_SEPARATOR = "__"
SCAN_SCHEMA: dict[str, type[pl.DataType]] = {
    "relpath": pl.String,
    "bytes": pl.Int64,
    "mtime_ns": pl.Int64,
}


def is_image_name(name: str) -> bool:
    """Whether a directory entry's name is an image file's (by extension; hidden files are not)."""
    return not name.startswith(".") and name_suffix(name).lower() in IMAGE_SUFFIXES


def walk_images(folder: Path) -> Iterator[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of every image under ``folder``, folder by folder in
    sorted name order (so the same tree gives the same order on any file system).

    Links to files and folders are followed (a link loop is walked once). One stat per entry
    through the folder's descriptor and no object per file beyond its name: a folder of a
    million images costs its list of names. Raises :class:`InputTableError` when the folder does
    not exist or cannot be listed.
    """
    if not folder.is_dir():
        raise InputTableError(f"{folder}: image folder not found")
    seen: set[tuple[int, int]] = set()

    def visit(fd: int, prefix: str) -> Iterator[tuple[str, int, int]]:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        for name in sorted(os.listdir(fd)):
            if name.startswith("."):
                continue
            try:
                # dir_fd: no path built per file (a folder may hold a million).
                entry = os.stat(name, dir_fd=fd)
            except FileNotFoundError:
                continue  # removed while we listed, or a broken link
            if stat.S_ISDIR(entry.st_mode):
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    yield from visit(child, f"{prefix}{name}/")
                finally:
                    os.close(child)
            elif stat.S_ISREG(entry.st_mode) and is_image_name(name):
                if not _utf8(name):
                    log.warning(
                        "%s: skipping %r: its name is not UTF-8 (rename it to use it)",
                        folder,
                        f"{prefix}{name}".encode("utf-8", "surrogateescape"),
                    )
                    continue
                yield f"{prefix}{name}", entry.st_size, entry.st_mtime_ns

    try:
        top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield from visit(top, "")
        finally:
            os.close(top)
    except OSError as exc:
        raise InputTableError(f"{folder}: cannot list the image folder: {exc}") from exc


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan_images(folder: Path) -> pl.DataFrame:
    """:func:`walk_images` as a table (:data:`SCAN_SCHEMA`), in its order."""
    relpaths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    for relpath, size, mtime_ns in walk_images(folder):
        relpaths.append(relpath)
        sizes.append(size)
        mtimes.append(mtime_ns)
    return pl.DataFrame(
        {"relpath": relpaths, "bytes": sizes, "mtime_ns": mtimes}, schema=SCAN_SCHEMA
    )


def listing_digests(folder: Path, parts: int = 1, memo_dir: Path | None = None) -> list[str]:
    """A digest of the folder's listing (:func:`walk_images`) per part
    (:func:`geolocsft.layout.part_of` of each image's relative path): it changes when an image
    of that part is added, removed, renamed or rewritten (size, mtime). No file is opened; a
    copy that keeps the mtimes (``cp -p``, ``rsync -a``) has the same digest.

    With ``memo_dir``, the listing itself is kept there under its digest (see
    :func:`remembered_listing`), so that the ingest job made stale by this listing reads it
    instead of walking the folder a second time; without, nothing per image is kept."""
    digests = [hashlib.sha256() for _ in range(parts)]
    keep = memo_dir is not None
    relpaths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    for relpath, size, mtime_ns in walk_images(folder):
        part = part_of(relpath, parts) if parts > 1 else 0
        digests[part].update(f"{relpath}\0{size}\0{mtime_ns}\n".encode())
        if keep:
            relpaths.append(relpath)
            sizes.append(size)
            mtimes.append(mtime_ns)
    found = [d.hexdigest() for d in digests]
    if memo_dir is not None:
        path = _listing_path(memo_dir, combined_digest(found))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            pl.DataFrame(
                {"relpath": relpaths, "bytes": sizes, "mtime_ns": mtimes}, schema=SCAN_SCHEMA
            ).write_parquet(tmp)
            tmp.replace(path)
    return found


def combined_digest(digests: list[str]) -> str:
    """The digest of a whole folder from its parts' :func:`listing_digests`."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def _listing_path(memo_dir: Path, digest: str) -> Path:
    return memo_dir / "listings" / f"{digest}.parquet"


def remembered_listing(memo_dir: Path, digest: str) -> pl.DataFrame | None:
    """The listing (:func:`scan_images`'s table) whose :func:`combined_digest` is ``digest``,
    when :func:`listing_digests` kept it; else None (walk the folder)."""
    path = _listing_path(memo_dir, digest)
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError):
        return None


def id_from_relpath(relpath: str) -> str:
    """The id of an image from its relative path: ``a/b/c.jpg`` -> ``a__b__c``."""
    parts = relpath.split("/")
    parts[-1] = normalise_image_id(parts[-1])
    return ID_PART_SEPARATOR.join(parts)


def _split(relpath: str) -> tuple[str, str]:
    folder, _, name = relpath.rpartition("/")
    return folder, name


class FolderIndex:
    """The images of a folder, for finding the file a metadata row names.

    A row's id (or file name) is looked up by exact name, then by stem (``x`` finds ``x.jpg``),
    anywhere in the tree when it has no folder part; an id with folders (``e4/5b/x.jpg``, as
    MP16's table has them) is looked up at that relative path.
    """

    def __init__(self, relpaths: list[str]) -> None:
        self.relpaths = set(relpaths)
        # A stem's relative path, or its list when several files share it (rare: no list each).
        self.by_stem: dict[str, str | list[str]] = {}
        for relpath in relpaths:
            stem = normalise_image_id(_split(relpath)[1])
            known = self.by_stem.setdefault(stem, relpath)
            if known is not relpath:
                if isinstance(known, str):
                    self.by_stem[stem] = [known, relpath]
                else:
                    known.append(relpath)

    def lookup(self, raw_id: str) -> list[str]:
        """The relative paths that match ``raw_id`` (none, one, or several: ambiguous)."""
        text = raw_id.strip()
        if text in self.relpaths:
            return [text]
        folder, name = _split(text)
        found = self.by_stem.get(normalise_image_id(name), [])
        options = [found] if isinstance(found, str) else found
        if folder:
            options = [r for r in options if _split(r)[0] == folder]
        exact = [r for r in options if _split(r)[1] == name]
        return exact or list(options)
