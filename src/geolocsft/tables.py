"""Metadata tables of geotagged images: which column holds what, image ids, coordinates.

Shared by ingest (the corpus and benchmark tables) and Hub acquisition (tables inside archives
and Parquet shards): the columns are detected from the names real datasets use unless the config
names them, ids are normalised (a file extension is dropped) and checked to be safe file names,
and coordinates are parsed leniently (bad values are reported by the caller, naming the row).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geolocsft.errors import InputTableError
from geolocsft.images import IMAGE_SUFFIXES
from geolocsft.io import read_table_header, read_text_table

# Column names that real datasets use, matched case-insensitively, in order of preference.
ID_COLUMN_CANDIDATES = ("image_id", "id", "img_id", "image", "photo_id", "name")
LAT_COLUMN_CANDIDATES = ("lat", "latitude", "gps_lat", "gps_latitude", "y")
LON_COLUMN_CANDIDATES = ("lon", "lng", "long", "longitude", "gps_lon", "gps_longitude", "x")
FILE_COLUMN_CANDIDATES = ("file", "path", "filepath", "file_path", "image_path", "filename")


_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ColumnMap:
    """Which table column holds what; ``None`` means detect from the usual names."""

    id: str | None = None
    lat: str | None = None
    lon: str | None = None
    file: str | None = None


def name_suffix(name: str) -> str:
    """The extension of the last part of a ``/`` path, as ``PurePosixPath(name).suffix``
    (``""`` for ``.hidden`` or ``a.``), in string operations (millions of calls)."""
    base = name.rpartition("/")[2]
    dot = base.rfind(".")
    return base[dot:] if 0 < dot < len(base) - 1 else ""


def normalise_image_id(raw: str) -> str:
    """Strip surrounding blanks and a known image extension: ``a@N00.jpg`` → ``a@N00``."""
    text = raw.strip()
    suffix = name_suffix(text).lower()
    return text[: -len(suffix)] if suffix in IMAGE_SUFFIXES else text


def unsafe_id_reason(image_id: str) -> str | None:
    """Why an id cannot name a file under an output folder, or ``None`` if it can.

    Ids become file names later (one caption JSON per image), so path separators, ``..``,
    leading dots, control characters and over-long names are refused. Characters such as ``@``,
    spaces or non-ASCII letters are fine.
    """
    if not image_id:
        return "the id is empty"
    if "/" in image_id or "\\" in image_id:
        return "the id contains a path separator and would escape the output folder"
    if image_id.startswith("."):
        return "the id starts with '.' (hidden file, or '..' escaping the output folder)"
    if _CONTROL_CHARACTERS.search(image_id):
        return "the id contains control characters"
    if len(image_id.encode()) > 200:
        return "the id is longer than 200 bytes and cannot be a file name"
    return None


def _find_column(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str]
) -> str | None:
    if wanted is not None:
        return wanted if wanted in columns else None
    by_lower = {c.strip().lower(): c for c in columns}
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    return None


def resolve_columns(columns: Sequence[str], column_map: ColumnMap, table: str) -> ColumnMap:
    """Pick the id/lat/lon/file columns, or raise an error naming the table and its columns."""
    found = ColumnMap(
        id=_find_column(columns, column_map.id, ID_COLUMN_CANDIDATES),
        lat=_find_column(columns, column_map.lat, LAT_COLUMN_CANDIDATES),
        lon=_find_column(columns, column_map.lon, LON_COLUMN_CANDIDATES),
        file=_find_column(columns, column_map.file, FILE_COLUMN_CANDIDATES),
    )
    problems = []
    for role, candidates in (("lat", LAT_COLUMN_CANDIDATES), ("lon", LON_COLUMN_CANDIDATES)):
        if getattr(found, role) is None:
            asked = getattr(column_map, role)
            problems.append(
                f"column {asked!r} (columns.{role} in config) is not in the table"
                if asked
                else f"no {role} column (looked for {', '.join(candidates)}; "
                f"set columns.{role} in config)"
            )
    if column_map.id is not None and found.id is None:
        problems.append(f"column {column_map.id!r} (columns.id in config) is not in the table")
    if column_map.file is not None and found.file is None:
        problems.append(f"column {column_map.file!r} (columns.file in config) is not in the table")
    if found.id is None and found.file is None and not problems:
        problems.append(
            "no image id or file column (looked for "
            f"{', '.join(ID_COLUMN_CANDIDATES + FILE_COLUMN_CANDIDATES)}; set columns.id)"
        )
    if problems:
        raise InputTableError(
            f"{table}: " + "; ".join(problems) + f". The table's columns are: {', '.join(columns)}"
        )
    return found


#: How a user declares a table's encoding (appended to the error for a non-UTF-8 table).
ENCODING_HINT = (
    "declare its encoding with the dataset's `encoding` key in config (e.g. encoding: cp1252)"
)


def read_metadata_table(path: Path, encoding: str = "utf-8") -> pl.DataFrame:
    """Read a CSV/TSV/Parquet table with every column as text (values are validated later).

    A CSV/TSV is read as ``encoding``; text that is not valid there is an
    :class:`InputTableError` naming the line and the likely encoding."""
    return read_text_table(path, "metadata table", encoding, ENCODING_HINT)


def check_table_columns(
    path: Path, column_map: ColumnMap, encoding: str = "utf-8", required: Sequence[str] = ()
) -> ColumnMap:
    """Check from the header alone that a table has usable id/lat/lon columns, and the
    ``required`` ones (parse time)."""
    header = read_table_header(path, "metadata table", encoding, ENCODING_HINT)
    for name in required:
        if name not in header:
            raise InputTableError(
                f"{path}: no column {name!r} (ingest.split_by). The table's columns are: "
                + ", ".join(header)
            )
    return resolve_columns(header, column_map, str(path))


def coordinate_problem(name: str, text: str | None) -> str:
    """Why the cell of coordinate column ``name`` gives no number: ``lat is empty``,
    ``lat = 'abc' is not a number``, ``lat = 'NaN' is not a finite number``."""
    if text is None or not text.strip():
        return f"{name} is empty"
    try:
        float(text.strip())
    except ValueError:
        return f"{name} = {text!r} is not a number"
    return f"{name} = {text!r} is not a finite number"


def parse_coordinate(text: str | None) -> float | None:
    """A float from table text, or ``None`` for empty/NaN/non-numeric text."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if np.isfinite(value) else None
