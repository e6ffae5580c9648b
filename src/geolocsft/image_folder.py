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
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from geolocsft.errors import InputTableError
from geolocsft.images import IMAGE_SUFFIXES
from geolocsft.layout import part_of
from geolocsft.tables import name_suffix, normalise_image_id

#: Joins the folders and the stem of a nested image's relative path into its id.
ID_PART_SEPARATOR = "__"
SCAN_SCHEMA: dict[str, type[pl.DataType]] = {
    "relpath": pl.String,
    "bytes": pl.Int64,
    "mtime_ns": pl.Int64,
}


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One image file: its path relative to the folder (``/``-separated) and its stat."""

    relpath: str
    size: int
    mtime_ns: int


def is_image_name(name: str) -> bool:
    """Whether a directory entry's name is an image file's (by extension; hidden files are not)."""
    return not name.startswith(".") and name_suffix(name).lower() in IMAGE_SUFFIXES


def walk_images(folder: Path) -> Iterator[ImageFile]:
    """Every image file under ``folder`` (recursively, sorted per folder), with one stat each.

    Symbolic links to files and folders are followed. Raises :class:`InputTableError` when the
    folder does not exist.
    """
    if not folder.is_dir():
        raise InputTableError(f"{folder}: image folder not found")

    seen: set[tuple[int, int]] = set()  # folders visited (a link loop is walked once)

    def visit(directory: str, prefix: str) -> Iterator[ImageFile]:
        info = Path(directory).stat()
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                yield from visit(entry.path, f"{prefix}{entry.name}/")
            elif is_image_name(entry.name) and entry.is_file():
                info = entry.stat()
                yield ImageFile(f"{prefix}{entry.name}", info.st_size, info.st_mtime_ns)

    yield from visit(str(folder), "")


def scan_images(folder: Path) -> pl.DataFrame:
    """:func:`walk_images` as a table (:data:`SCAN_SCHEMA`), in walk order."""
    relpaths, sizes, mtimes = [], [], []
    for item in walk_images(folder):
        relpaths.append(item.relpath)
        sizes.append(item.size)
        mtimes.append(item.mtime_ns)
    return pl.DataFrame(
        {"relpath": relpaths, "bytes": sizes, "mtime_ns": mtimes},
        schema=SCAN_SCHEMA,
    )


def listing_digests(folder: Path, parts: int = 1) -> list[str]:
    """A digest of the folder's listing per part (:func:`geolocsft.layout.part_of` of each
    image's relative path): it changes when an image of that part is added, removed, renamed,
    rewritten (size, mtime). No file is opened; a copy that keeps the mtimes (``cp -p``,
    ``rsync -a``) has the same digest."""
    digests = [hashlib.sha256() for _ in range(parts)]
    for item in walk_images(folder):
        part = part_of(item.relpath, parts) if parts > 1 else 0
        digests[part].update(f"{item.relpath}\0{item.size}\0{item.mtime_ns}\n".encode())
    return [d.hexdigest() for d in digests]


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
        self.by_stem: dict[str, list[str]] = defaultdict(list)
        for relpath in relpaths:
            self.by_stem[normalise_image_id(_split(relpath)[1])].append(relpath)

    def lookup(self, raw_id: str) -> list[str]:
        """The relative paths that match ``raw_id`` (none, one, or several: ambiguous)."""
        text = raw_id.strip()
        if text in self.relpaths:
            return [text]
        folder, name = _split(text)
        options = self.by_stem.get(normalise_image_id(name), [])
        if folder:
            options = [r for r in options if _split(r)[0] == folder]
        exact = [r for r in options if _split(r)[1] == name]
        return exact or list(options)
