"""Ingest: an image folder plus a metadata table (or EXIF GPS) → a validated manifest.

The manifest has one row per usable image: id, path, sha256 of the bytes, size, format,
coordinates, a deterministic train/test split, the offline reverse-geocoded country, ``phash``
(a perceptual hash, :mod:`geolocsft.image_check`) and ``split_group`` (the key the split was
drawn by: the id, or the image's group under ``ingest.split_by``). Every input row or image that
cannot be used becomes a row of the rejection report with the file, the table row and the
reason; with ``on_bad_input: fail`` any such row stops the run with an error that names them
and writes all of them to a report beside the log.

The stage in three steps, so that the image checks can run as several jobs
(``scale_out.parts``): :func:`geolocsft.ingest_plan.plan_dataset` reads the table and the folder
(one stat per image) and decides which file each row names;
:func:`~geolocsft.ingest_plan.check_plan` checks the images (of one part), reusing the per-item
memo; :func:`assemble` builds the manifest, the rejection report, the listing of every input
file and the summary.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl

from geolocsft.candidates import Candidates
from geolocsft.errors import GeolocsftError
from geolocsft.geocode import reverse_geocode_memoized
from geolocsft.image_check import FACTS_SCHEMA, CheckLimits, default_workers
from geolocsft.ingest_plan import Plan, check_plan, checked_from_parts, plan_dataset
from geolocsft.io import atomic_write_json
from geolocsft.splits import assign_split
from geolocsft.tables import ColumnMap

log = logging.getLogger(__name__)

BadInputPolicy = Literal["quarantine", "fail"]
HighBitDepthPolicy = Literal["convert", "reject"]
SplitMode = Literal["hash", "all_test", "all_train"]

MANIFEST_SCHEMA: dict[str, type[pl.DataType] | pl.DataType] = {
    "image_id": pl.String,
    "path": pl.String,
    "sha256": pl.String,
    "bytes": pl.Int64,
    "width": pl.Int64,
    "height": pl.Int64,
    "format": pl.String,
    "mode": pl.String,
    "lat": pl.Float64,
    "lon": pl.Float64,
    "coord_source": pl.String,
    "source_row": pl.Int64,
    "split": pl.String,
}
REJECTED_SCHEMA: dict[str, type[pl.DataType] | pl.DataType] = {
    "source": pl.String,
    "row": pl.Int64,
    "image_id": pl.String,
    "path": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}
_SHOWN_IN_ERRORS = 20


@dataclass(frozen=True)
class IngestSettings:
    """The ``ingest:`` section of the config (see config/README.md)."""

    CONFIG_SECTION: ClassVar[str] = "ingest"

    on_bad_input: BadInputPolicy
    high_bit_depth: HighBitDepthPolicy
    test_fraction: float
    split_salt: str
    split_by: str | None
    split_group_pattern: str | None
    min_side_px: int
    max_image_pixels: int
    reverse_geocode_max_km: float
    workers: int  # 0 = one per CPU core

    @property
    def limits(self) -> CheckLimits:
        return CheckLimits(self.max_image_pixels, self.min_side_px, self.high_bit_depth)


@dataclass
class IngestResult:
    """Manifest, rejection report, listing of the input files and a summary."""

    manifest: pl.DataFrame
    rejected: pl.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    listing: pl.DataFrame | None = None


def split_groups(
    ids: list[str], groups: list[str | None], settings: IngestSettings
) -> tuple[list[str], int]:
    """The key each image's split is drawn by, and how many fell back to their own id.

    Without ``split_by`` and ``split_group_pattern`` it is the id. ``split_by`` takes the
    table column's value; ``split_group_pattern`` (a regular expression) is searched in that
    value, or in the id, and the group is its first capture group (or the whole match). An image
    with an empty value, or where the pattern does not match, is its own group.
    """
    if not settings.split_by and not settings.split_group_pattern:
        return ids, 0
    values = groups if settings.split_by else ids
    if settings.split_group_pattern:
        try:
            pattern = re.compile(settings.split_group_pattern)
        except re.error as exc:
            raise GeolocsftError(
                f"ingest.split_group_pattern = {settings.split_group_pattern!r} is not a "
                f"regular expression: {exc}"
            ) from None
        found = [pattern.search(v) if v else None for v in values]
        values = [(m.group(1) if pattern.groups else m.group(0)) if m else None for m in found]
    keys = [v if v else image_id for v, image_id in zip(values, ids, strict=True)]
    return keys, sum(1 for v in values if not v)


def assemble(
    plan: Plan,
    checked: pl.DataFrame,
    settings: IngestSettings,
    split_mode: SplitMode = "hash",
    failure_report: Path | None = None,
    memo_dir: Path | None = None,
) -> IngestResult:
    """The manifest, the rejection report, the listing and the summary from checked candidates
    (``memo_dir``: the reverse-geocoded places of points seen before are reused).

    Raises :class:`GeolocsftError` when the policy is ``fail`` and any row is unusable (after
    writing every problem to ``failure_report``, when given), or when no image is usable.
    """
    found = plan.found
    bad = checked.filter(pl.col("reason").is_not_null())
    good = checked.filter(pl.col("reason").is_null())
    if plan.from_table:
        good = good.with_columns(pl.lit("table").alias("coord_source"))
    else:
        good = good.with_columns(
            pl.col("exif_lat").alias("lat"),
            pl.col("exif_lon").alias("lon"),
            pl.lit("exif").alias("coord_source"),
        )
        usable = pl.col("lat").is_between(-90, 90) & pl.col("lon").is_between(-180, 180)
        no_gps = good.filter(~usable.fill_null(False)).with_columns(
            pl.lit("no_exif_gps").alias("reason"),
            pl.lit(
                "no metadata table was given and the image has no usable EXIF GPS position"
            ).alias("detail"),
        )
        good = good.filter(usable.fill_null(False))
        bad = pl.concat([bad, no_gps.select(bad.columns)])
    rejected = pl.concat(
        [
            pl.DataFrame([asdict(r) for r in found.rejections], schema=REJECTED_SCHEMA),
            bad.select(
                pl.lit(found.source).alias("source"),
                pl.col("source_row").alias("row"),
                "image_id",
                "path",
                "reason",
                "detail",
            ),
        ]
    ).sort("row", "image_id", nulls_last=True, maintain_order=True)

    manifest = good.select([c for c in MANIFEST_SCHEMA if c != "split"])
    ids = manifest["image_id"].to_list()
    groups, fallbacks = split_groups(ids, good["group"].to_list(), settings)
    if split_mode == "hash":
        splits = assign_split(groups, settings.test_fraction, settings.split_salt)
    else:
        splits = ["test" if split_mode == "all_test" else "train"] * manifest.height
    manifest = manifest.with_columns(pl.Series("split", splits, dtype=pl.String))
    places = reverse_geocode_memoized(
        manifest["lat"], manifest["lon"], settings.reverse_geocode_max_km, memo_dir
    )
    manifest = pl.concat(
        [
            manifest,
            places,
            good.select("phash"),
            pl.DataFrame({"split_group": groups}, schema={"split_group": pl.String}),
        ],
        how="horizontal",
    )
    summary = _summary(manifest, rejected, found, settings, split_mode, fallbacks)
    read = int(checked["checked_now"].sum())
    summary |= {"checked_now": read, "checked_before": checked.height - read}
    _enforce_policy(rejected, manifest, settings, found.source, failure_report)
    return IngestResult(manifest, rejected, summary, _listing(plan, checked))


def _listing(plan: Plan, checked: pl.DataFrame) -> pl.DataFrame:
    """Every input file: each image of the folder and each file a row names outside it."""
    hashed = checked.select("relpath", "in_folder", "sha256").unique("relpath", keep="first")
    folder = plan.scan.join(
        hashed.filter("in_folder").drop("in_folder"), on="relpath", how="left"
    ).select(
        (pl.lit(f"{plan.shown_dir}/") + pl.col("relpath")).alias("path"),
        "bytes",
        "mtime_ns",
        "sha256",
    )
    outside = (
        checked.filter(~pl.col("in_folder"))
        .unique("relpath", keep="first")
        .select("path", "bytes", "mtime_ns", "sha256")
    )
    return pl.concat([folder, outside]).sort("path")


def _summary(
    manifest: pl.DataFrame,
    rejected: pl.DataFrame,
    found: Candidates,
    settings: IngestSettings,
    split_mode: SplitMode,
    split_fallbacks: int,
) -> dict[str, Any]:
    same_bytes = (
        manifest.group_by("sha256")
        .agg(pl.col("image_id").sort())
        .filter(pl.col("image_id").list.len() > 1)
        .sort(pl.col("image_id").list.first())["image_id"]
        .to_list()
    )
    if same_bytes:
        log.warning(
            "%d groups of ids share identical image bytes: %s", len(same_bytes), same_bytes[:20]
        )
    unlabelled = found.unlabelled
    if unlabelled:
        log.warning(
            "%d images in the folder have no row in the metadata table (rejected as "
            "no_metadata_row), e.g. %s",
            len(unlabelled),
            ", ".join(unlabelled[:5]),
        )
    if split_fallbacks:
        log.warning(
            "%d images have no split group (empty ingest.split_by value, or "
            "ingest.split_group_pattern does not match): each is its own group",
            split_fallbacks,
        )
    return {
        "images": manifest.height,
        "rejected": rejected.height,
        "rejected_by_reason": dict(Counter(rejected["reason"].to_list()).most_common()),
        "split_mode": split_mode,
        "splits": dict(Counter(manifest["split"].to_list()).most_common()),
        "split_groups": manifest["split_group"].n_unique(),
        "split_group_fallbacks": split_fallbacks,
        "countries": manifest["country_code"].n_unique()
        - int(manifest["country_code"].has_nulls()),
        "without_country": int(manifest["country_code"].null_count()),
        "identical_bytes_groups": same_bytes[:100],
        "identical_bytes_group_count": len(same_bytes),
        "unlabelled_images": len(unlabelled),
        "unlabelled_examples": unlabelled[:20],
        "settings": asdict(settings),
    }


def _enforce_policy(
    rejected: pl.DataFrame,
    manifest: pl.DataFrame,
    settings: IngestSettings,
    source: str,
    failure_report: Path | None,
) -> None:
    if failure_report is not None:
        failure_report.unlink(missing_ok=True)  # a report of an earlier failed run
    if rejected.height and settings.on_bad_input == "fail":
        problems = [_describe(r) for r in rejected.head(_SHOWN_IN_ERRORS).iter_rows(named=True)]
        more = rejected.height - len(problems)
        where = ""
        if failure_report is not None:
            failure_report.parent.mkdir(parents=True, exist_ok=True)
            rejected.write_csv(failure_report)
            where = f"\nAll {rejected.height} are listed in {failure_report}."
        raise GeolocsftError(
            f"{rejected.height} unusable input rows/images and ingest.on_bad_input = fail:\n  "
            + "\n  ".join(problems)
            + (f"\n  … and {more} more" if more else "")
            + where
            + "\nFix them, or set ingest.on_bad_input: quarantine to set them aside in "
            "rejected.csv."
        )
    if manifest.height == 0:
        detail = "\n  ".join(_describe(r) for r in rejected.head(10).iter_rows(named=True))
        raise GeolocsftError(
            f"{source}: no usable image"
            + (f"; the first problems:\n  {detail}" if detail else " (the input is empty)")
        )


def _describe(row: dict[str, Any]) -> str:
    where = f"{row['source']}, row {row['row']}" if row["row"] is not None else row["source"]
    what = f"image {row['image_id']!r}" if row["image_id"] else "this row"
    file_part = f" ({row['path']})" if row["path"] else ""
    return f"{where}: {what}{file_part}: {row['reason']}: {row['detail']}"


def ingest(
    images_dir: Path,
    metadata_table: Path | None,
    column_map: ColumnMap,
    settings: IngestSettings,
    split_mode: SplitMode = "hash",
    path_base: Path | None = None,
    *,
    encoding: str = "utf-8",
    memo_dir: Path | None = None,
    part_files: list[Path] | None = None,
    failure_report: Path | None = None,
    scan: pl.DataFrame | None = None,
) -> IngestResult:
    """Build the manifest of one dataset.

    ``metadata_table=None`` reads coordinates from each image's EXIF GPS block.
    ``split_mode="all_test"`` is for benchmarks, whose every image is evaluated.
    Paths in the outputs are written relative to ``path_base`` when they lie under it.
    ``memo_dir`` keeps each image's check for the next run; ``part_files`` are the results of
    the part jobs (``scale_out.parts``), used instead of checking here. ``scan`` is the image
    folder's listing when the caller has it (:func:`geolocsft.image_folder.remembered_listing`).
    Raises :class:`GeolocsftError` when the policy is ``fail`` and any row is unusable, or when
    no image at all is usable.
    """
    plan = plan_dataset(
        images_dir,
        metadata_table,
        column_map,
        split_by=settings.split_by if split_mode == "hash" else None,
        encoding=encoding,
        path_base=path_base,
        scan=scan,
    )
    workers = default_workers(settings.workers)
    if part_files:
        checked = checked_from_parts(plan, part_files, settings.limits, workers, memo_dir)
    else:
        checked = check_plan(plan, settings.limits, workers, memo_dir)
    return assemble(plan, checked, settings, split_mode, failure_report, memo_dir)


def write_outputs(
    result: IngestResult,
    manifest_path: Path,
    rejected_path: Path,
    summary_path: Path,
    listing_path: Path | None = None,
) -> None:
    """Write the manifest (Parquet), the rejection report (CSV), the summary (JSON) and the
    listing of the input files (Parquet)."""
    for path in (manifest_path, rejected_path, summary_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    result.manifest.write_parquet(manifest_path, statistics=True)
    result.rejected.write_csv(rejected_path)
    atomic_write_json(summary_path, result.summary)
    if listing_path is not None and result.listing is not None:
        listing_path.parent.mkdir(parents=True, exist_ok=True)
        result.listing.write_parquet(listing_path, statistics=True)


def write_part(checked: pl.DataFrame, path: Path) -> None:
    """The facts of one part's images (the output of a part job)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checked.select("key", "relpath", *FACTS_SCHEMA, "checked_now").write_parquet(
        path, statistics=True
    )
