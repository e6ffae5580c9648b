"""What unpacking a fetched Hub dataset works with: its settings, its report, the image writer.

:func:`geolocsft.hub.unpack.unpack` turns the fetched files into the layout ingest reads: an
image folder and a metadata table (:data:`ACQUIRED_COLUMNS`). This module holds what the two
unpackers (:mod:`geolocsft.hub.archives`, :mod:`geolocsft.hub.shards`) share: the settings of an
``acquire.datasets.<name>`` block, the problems found per row, the writer that stores each
image once under a unique name, and small helpers for patterns, cells and image formats.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

from geolocsft.settings import from_config
from geolocsft.tables import ColumnMap

UnpackFormat = Literal["archives", "parquet"]
BadInputPolicy = Literal["quarantine", "fail"]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "jpeg", "png", "photo", "picture")
# Columns of the metadata table that unpack writes (and the column map ingest reads it with).
ACQUIRED_COLUMNS = {"id": "image_id", "lat": "lat", "lon": "lon", "file": "file"}
# Pillow format -> file extension of extracted images.
FORMAT_SUFFIX = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "TIFF": ".tif",
    "BMP": ".bmp",
}


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
    #: text encoding of the CSV/TSV metadata tables
    encoding: str
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


def matches_any(path: str, patterns: Iterable[str]) -> bool:
    lowered = path.lower()
    return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns)


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def image_suffix(data: bytes) -> str | None:
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
    if fmt in FORMAT_SUFFIX:
        return FORMAT_SUFFIX[fmt]
    known = [ext for ext, name in Image.registered_extensions().items() if name == fmt]
    return sorted(known)[0] if known else ".img"


def pick_column(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str]
) -> str | None:
    if wanted is not None:
        return wanted if wanted in columns else None
    by_lower = {c.strip().lower(): c for c in columns}
    return next((by_lower[name] for name in candidates if name in by_lower), None)


class ImageWriter:
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


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN
        return ""
    return str(value)


def coordinates_missing(lat: str, lon: str) -> bool:
    def bad(text: str) -> bool:
        try:
            value = float(text)
        except ValueError:
            return True
        return value != value or value in (float("inf"), float("-inf"))

    return bad(lat) or bad(lon)
