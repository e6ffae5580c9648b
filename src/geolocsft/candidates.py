"""The rows of a dataset before its images are checked: which file each row names, and which rows
(or images) cannot be used, with the table row and the reason.

A metadata table names each image by id (the file name with or without extension, found
anywhere in the image folder; or a path relative to it such as MP16's ``e4/5b/3413224425.jpg``)
or by a file column. Rows with unsafe ids, missing files, several matching files or bad
coordinates become :class:`Rejection` rows; images in the folder that no row names are rejected
as ``no_metadata_row``. Without a table every image of the folder is a candidate (its position
comes from EXIF GPS) with its id from its relative path
(:func:`geolocsft.image_folder.id_from_relpath`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

from geolocsft.image_folder import FolderIndex, id_from_relpath
from geolocsft.tables import (
    ColumnMap,
    coordinate_problem,
    normalise_image_id,
    parse_coordinate,
    read_metadata_table,
    resolve_columns,
    unsafe_id_reason,
)


@dataclass(slots=True)
class Rejection:
    """One unusable input row or image, as written to ``rejected.csv``."""

    source: str
    row: int | None
    image_id: str | None
    path: str | None
    reason: str
    detail: str

    def describe(self) -> str:
        where = f"{self.source}, row {self.row}" if self.row is not None else self.source
        what = f"image {self.image_id!r}" if self.image_id else "this row"
        file_part = f" ({self.path})" if self.path else ""
        return f"{where}: {what}{file_part}: {self.reason}: {self.detail}"


@dataclass(slots=True)
class Candidate:
    """A row (or an image of the folder) whose file is to be checked."""

    image_id: str
    #: the path to open when the file is outside the image folder (None inside it: the folder
    #: and ``relpath`` name it; a million candidates keep no second path string each)
    file: str | None
    #: the path relative to the image folder, or ``file`` for a file outside it
    relpath: str
    in_folder: bool
    source_row: int | None
    lat: float | None
    lon: float | None
    #: the row's ``ingest.split_by`` cell (None without one)
    group: str | None = None


@dataclass
class Candidates:
    """What a dataset's table and folder give before any image is read."""

    rows: list[Candidate]
    rejections: list[Rejection]
    source: str
    #: relative paths of the images in the folder that no row names
    unlabelled: list[str] = field(default_factory=list)


def _absolute(path: Path | str) -> str:
    """An absolute, normalised path (no symlinks resolved: the folder scan resolves none)."""
    return os.path.normpath(Path(path).absolute())


def relpath_id_problem(raw_id: str) -> str | None:
    """Why an id with folder parts (``a/b/c.jpg``) cannot name a file under the image folder."""
    if "\\" in raw_id:
        return "the id contains a backslash and would escape the output folder"
    parts = raw_id.strip().split("/")
    if raw_id.strip().startswith("/") or any(p in ("", ".", "..") for p in parts):
        return "the id contains an absolute path or '..' and would escape the output folder"
    if any(p.startswith(".") for p in parts):
        return "the id has a hidden folder or file part (starting with '.')"
    return None


def _shown(
    images_dir: Path, display: Callable[[Path], str]
) -> tuple[str, Callable[[Candidate], str]]:
    shown_dir = display(images_dir)

    def shown(cand: Candidate) -> str:
        return f"{shown_dir}/{cand.relpath}" if cand.in_folder else display(Path(cand.relpath))

    return shown_dir, shown


def _cells(table: pl.DataFrame, columns: list[str | None]) -> Iterator[tuple[str | None, ...]]:
    """The cells of ``columns`` (None: a column the table lacks, all None) row by row, taken out
    of the table a slice at a time (a million-row table never becomes one list per column)."""
    for chunk in table.iter_slices(50_000):
        cells = [chunk[c].to_list() if c else [None] * chunk.height for c in columns]
        yield from zip(*cells, strict=True)


def from_table(
    table_path: Path,
    images_dir: Path,
    index: FolderIndex,
    column_map: ColumnMap,
    display: Callable[[Path], str],
    encoding: str = "utf-8",
    split_by: str | None = None,
) -> Candidates:
    """Candidates and rejections of every row of a metadata table (see the module doc)."""
    table = read_metadata_table(table_path, encoding)
    cols = resolve_columns(table.columns, column_map, str(table_path))
    source = str(table_path)
    shown_dir, _ = _shown(images_dir, display)
    folder_abs = _absolute(images_dir)
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    referenced: set[str] = set()

    # resolve_columns raised unless both coordinate columns were found.
    wanted = [cols.id, cols.file, str(cols.lat), str(cols.lon), split_by]
    for row, (raw_id, raw_file, raw_lat, raw_lon, group) in enumerate(
        _cells(table, wanted),
        start=1,  # 1-based data row (the header is not counted)
    ):
        raw_file = (raw_file or "").strip()
        if raw_id is None or not raw_id.strip():
            raw_id = PurePosixPath(raw_file).name if raw_file else ""
        nested = "/" in raw_id or "\\" in raw_id
        problem = relpath_id_problem(raw_id) if nested else None
        image_id = (
            id_from_relpath(raw_id.strip())
            if nested and not problem
            else normalise_image_id(raw_id)
        )
        problem = problem or unsafe_id_reason(image_id)
        if problem:
            reason = "unsafe_id" if raw_id.strip() else "empty_id"
            rejections.append(Rejection(source, row, image_id or None, None, reason, problem))
            continue

        def reject(
            reason: str, detail: str, path: str | None = None, _row: int = row, _id: str = image_id
        ) -> None:
            rejections.append(Rejection(source, _row, _id, path, reason, detail))

        if raw_file:
            given = Path(raw_file)
            options = (
                [given]
                if given.is_absolute()
                else [table_path.parent / given, images_dir / given, images_dir / given.name]
            )
            path = next((p for p in options if p.is_file()), None)
            if path is None:
                reject("missing_file", f"file {raw_file!r} not found", raw_file)
                continue
            relative = os.path.relpath(_absolute(path), folder_abs).replace(os.sep, "/")
            in_folder = relative in index.relpaths
            if in_folder:
                cand = Candidate(image_id, None, relative, True, row, None, None)
            else:
                cand = Candidate(image_id, str(path), path.as_posix(), False, row, None, None)
        else:
            matches = index.lookup(raw_id)
            if not matches:
                reject("missing_file", f"no file named {raw_id.strip()!r}[.ext] in {images_dir}")
                continue
            if len(matches) > 1:
                names = ", ".join(matches[:10]) + (" ..." if len(matches) > 10 else "")
                reject("ambiguous_file", f"several files match the id: {names}")
                continue
            relative = matches[0]
            cand = Candidate(image_id, None, relative, True, row, None, None)
        if cand.in_folder:
            referenced.add(cand.relpath)
        shown = f"{shown_dir}/{cand.relpath}" if cand.in_folder else display(Path(cand.relpath))

        lat, lon = parse_coordinate(raw_lat), parse_coordinate(raw_lon)
        if lat is None or lon is None:
            which = [
                (n, raw)
                for n, v, raw in (("lat", lat, raw_lat), ("lon", lon, raw_lon))
                if v is None
            ]
            reject(
                "missing_coordinates",
                "; ".join(coordinate_problem(name, raw) for name, raw in which),
                shown,
            )
            continue
        if not -90.0 <= lat <= 90.0:
            reject("bad_latitude", f"lat = {raw_lat} is outside [-90, 90]", shown)
            continue
        if not -180.0 <= lon <= 180.0:
            reject("bad_longitude", f"lon = {raw_lon} is outside [-180, 180]", shown)
            continue
        cand.lat, cand.lon = lat, lon
        cand.group = group.strip() if group is not None and group.strip() else None
        candidates.append(cand)

    unlabelled = sorted(index.relpaths - referenced)
    rejections += [
        Rejection(
            str(images_dir),
            None,
            id_from_relpath(relative),
            f"{shown_dir}/{relative}",
            "no_metadata_row",
            f"no row of {table_path} names this image",
        )
        for relative in unlabelled
    ]
    return Candidates(candidates, rejections, source, unlabelled)


def from_folder(
    images_dir: Path, relpaths: list[str], display: Callable[[Path], str]
) -> Candidates:
    """Every image of the folder as a candidate (no table: positions from EXIF GPS)."""
    shown_dir = display(images_dir)
    candidates, rejections = [], []
    for relative in relpaths:
        image_id = id_from_relpath(relative)
        problem = unsafe_id_reason(image_id)
        if problem:
            rejections.append(
                Rejection(
                    str(images_dir), None, image_id, f"{shown_dir}/{relative}", "unsafe_id", problem
                )
            )
            continue
        candidates.append(Candidate(image_id, None, relative, True, None, None, None))
    return Candidates(candidates, rejections, str(images_dir))


def drop_duplicates(found: Candidates, display: Callable[[Path], str], images_dir: Path) -> None:
    """Keep one of exact repeats; refuse ids used for different files or places (in place)."""
    _, shown = _shown(images_dir, display)
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for cand in found.rows:
        groups[cand.image_id].append(cand)
    kept = []
    for image_id, group in groups.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        rows = ", ".join(str(c.source_row) if c.source_row else c.relpath for c in group)
        distinct = {(_absolute(c.file or images_dir / c.relpath), c.lat, c.lon) for c in group}
        if len(distinct) == 1:
            kept.append(group[0])
            reason, rejected = "duplicate_row", group[1:]
            detail = f"an identical copy of row {group[0].source_row} (kept there)"
        else:
            reason, rejected = "duplicate_id", group
            detail = (
                f"the id is used by several rows/files with different files or coordinates "
                f"({rows}); none is kept because which is right is unknown"
            )
        found.rejections += [
            Rejection(found.source, dup.source_row, image_id, shown(dup), reason, detail)
            for dup in rejected
        ]
    kept.sort(key=lambda c: (c.source_row or 0, c.image_id))
    found.rows = kept
