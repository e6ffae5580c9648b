"""Planning a dataset's ingest and checking its images (of one part, or all).

:func:`plan_dataset` reads the metadata table and the image folder (recursively, one stat per
image) and decides which file each row names (:mod:`geolocsft.candidates`); every candidate
gets a memo key from its relative path and stat. :func:`check_plan` checks the images (all, or
those of one part when ``scale_out.parts`` splits the checks into several jobs), reusing the
per-item memo (:func:`geolocsft.image_check.check_images`); :func:`checked_from_parts` joins the
part jobs' results for the gathering job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from geolocsft.candidates import Candidates, drop_duplicates, from_folder, from_table
from geolocsft.errors import GeolocsftError
from geolocsft.image_check import FACTS_SCHEMA, CheckLimits, check_images
from geolocsft.image_folder import SCAN_SCHEMA, FolderIndex, scan_images
from geolocsft.layout import part_of
from geolocsft.tables import ColumnMap

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A dataset's rows and files before any image is read (see :func:`plan_dataset`)."""

    #: the rejections found so far (its candidates are in ``frame``)
    found: Candidates
    scan: pl.DataFrame
    images_dir: str
    shown_dir: str
    from_table: bool
    #: one row per candidate: id, relpath, path shown, stat, memo key, table values
    frame: pl.DataFrame

    def with_files(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with the column ``file``: the path to open for each candidate."""
        return frame.with_columns(
            pl.when(pl.col("in_folder"))
            .then(pl.lit(f"{self.images_dir}/") + pl.col("relpath"))
            .otherwise(pl.col("relpath"))
            .alias("file")
        )


def _display(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def plan_dataset(
    images_dir: Path,
    metadata_table: Path | None,
    column_map: ColumnMap,
    *,
    split_by: str | None = None,
    encoding: str = "utf-8",
    path_base: Path | None = None,
    scan: pl.DataFrame | None = None,
) -> Plan:
    """Read the table and the folder (recursively, one stat per image) and resolve every row.
    ``scan``: the folder's listing when it was just made (:func:`scan_images`' table)."""

    def display(path: Path) -> str:
        return _display(path, path_base)

    if metadata_table is not None:
        if scan is None:
            scan = (
                scan_images(images_dir) if images_dir.is_dir() else pl.DataFrame(schema=SCAN_SCHEMA)
            )
        index = FolderIndex(scan["relpath"].to_list())
        found = from_table(
            metadata_table, images_dir, index, column_map, display, encoding, split_by
        )
    else:
        if split_by:
            raise GeolocsftError(
                f"ingest.split_by = {split_by!r} names a metadata table column, but "
                f"{images_dir} has no metadata table (EXIF GPS mode); use "
                "ingest.split_group_pattern on the ids instead"
            )
        if scan is None:
            scan = scan_images(images_dir)
        found = from_folder(images_dir, scan["relpath"].to_list(), display)
    drop_duplicates(found, display, images_dir)
    shown_dir = display(images_dir)
    rows = found.rows
    frame = pl.DataFrame(
        {
            "image_id": [c.image_id for c in rows],
            "relpath": [c.relpath for c in rows],
            "in_folder": [c.in_folder for c in rows],
            "source_row": [c.source_row for c in rows],
            "lat": [c.lat for c in rows],
            "lon": [c.lon for c in rows],
            "group": [c.group for c in rows],
        },
        schema={
            "image_id": pl.String,
            "relpath": pl.String,
            "in_folder": pl.Boolean,
            "source_row": pl.Int64,
            "lat": pl.Float64,
            "lon": pl.Float64,
            "group": pl.String,
        },
    )
    frame = frame.join(scan, on="relpath", how="left", maintain_order="left")
    if not frame["in_folder"].all():  # files named by a file column, outside the image folder
        stats = [None if c.in_folder else _stat(Path(c.relpath)) for c in rows]
        frame = frame.with_columns(
            pl.when(pl.col("in_folder"))
            .then(pl.col(name))
            .otherwise(pl.Series([s[i] if s else None for s in stats], dtype=pl.Int64))
            .alias(name)
            for i, name in enumerate(("bytes", "mtime_ns"))
        )
    outside = [None if c.in_folder else display(Path(c.relpath)) for c in rows]
    found.rows = []  # all in the frame now
    frame = frame.with_columns(
        pl.when(pl.col("in_folder"))
        .then(pl.lit(f"{shown_dir}/") + pl.col("relpath"))
        .otherwise(pl.Series(outside, dtype=pl.String))
        .alias("path"),
        pl.concat_str(["relpath", "bytes", "mtime_ns"], separator="\0").alias("key"),
    )
    return Plan(found, scan, str(images_dir), shown_dir, metadata_table is not None, frame)


def _stat(path: Path) -> tuple[int | None, int | None]:
    try:
        info = path.stat()
    except OSError:
        return None, None
    return info.st_size, info.st_mtime_ns


def parts_of(frame: pl.DataFrame, parts: int) -> pl.Series:
    """The part of each candidate (:func:`geolocsft.layout.part_of` of its relative path)."""
    return pl.Series("part", [part_of(r, parts) for r in frame["relpath"]], dtype=pl.Int64)


def check_plan(
    plan: Plan,
    limits: CheckLimits,
    workers: int,
    memo_dir: Path | None,
    part: int | None = None,
    parts: int = 1,
) -> pl.DataFrame:
    """The plan's candidates (of ``part`` only, when given) with their image facts."""
    frame = plan.frame
    if part is not None and parts > 1:
        frame = frame.filter(parts_of(frame, parts) == part)
    return check_images(
        plan.with_files(frame),
        limits,
        memo_dir,
        workers,
        desc=f"checking images in {plan.shown_dir}",
    )


def checked_from_parts(
    plan: Plan, part_files: list[Path], limits: CheckLimits, workers: int, memo_dir: Path | None
) -> pl.DataFrame:
    """The candidates with the facts that the part jobs found; any candidate the parts lack (a
    file changed between the jobs) is checked here."""
    columns = ["key", *FACTS_SCHEMA, "checked_now"]
    facts = pl.concat([pl.read_parquet(p, columns=columns) for p in part_files])
    base = plan.frame.drop([name for name in FACTS_SCHEMA if name in plan.frame.columns])
    checked = base.join(
        facts.unique("key", keep="first"), on="key", how="left", maintain_order="left"
    )
    lacking = checked.filter(pl.col("sha256").is_null() & pl.col("reason").is_null())
    if lacking.height:
        log.warning("%d images are not in the parts' results: checking them here", lacking.height)
        redone = check_images(
            plan.with_files(lacking.select(base.columns)),
            limits,
            memo_dir,
            workers,
        )
        checked = checked.update(
            redone.select("key", *FACTS_SCHEMA, "checked_now").unique("key"), on="key", how="left"
        )
    return checked
