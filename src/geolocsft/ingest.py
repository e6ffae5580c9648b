"""Ingest: an image folder plus a metadata table (or EXIF GPS) → a validated manifest.

The manifest has one row per usable image: id, path, sha256 of the bytes, size, format,
coordinates, a deterministic train/test split and the offline reverse-geocoded country.
Every input row or image that cannot be used becomes a row of the rejection report with the
file, the table row and the reason; with ``on_bad_input: fail`` any such row stops the run with
an error that lists them instead.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from tqdm import tqdm

from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.geo import valid_coordinates
from geolocsft.geocode import reverse_geocode
from geolocsft.images import HIGH_BIT_DEPTH_MODES, IMAGE_SUFFIXES
from geolocsft.io import atomic_write_json
from geolocsft.splits import assign_split
from geolocsft.tables import (
    ColumnMap,
    normalise_image_id,
    parse_coordinate,
    read_metadata_table,
    resolve_columns,
    unsafe_id_reason,
)

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


@dataclass(frozen=True)
class IngestSettings:
    """The ``ingest:`` section of the config (see config/README.md)."""

    CONFIG_SECTION: ClassVar[str] = "ingest"

    on_bad_input: BadInputPolicy
    high_bit_depth: HighBitDepthPolicy
    test_fraction: float
    split_salt: str
    min_side_px: int
    max_image_pixels: int
    reverse_geocode_max_km: float
    workers: int  # 0 = one per CPU core


@dataclass
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


@dataclass
class Candidate:
    """An input row (or an image found in the folder) before its image is checked."""

    image_id: str
    path: Path
    source_row: int | None
    lat: float | None
    lon: float | None


@dataclass
class ImageFacts:
    """What decoding an image told us."""

    sha256: str
    size_bytes: int
    width: int
    height: int
    format: str
    mode: str
    exif_lat: float | None = None
    exif_lon: float | None = None


@dataclass
class IngestResult:
    """Manifest, rejection report and a summary for ``summary.json``."""

    manifest: pl.DataFrame
    rejected: pl.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Images


class _FolderIndex:
    """File names in the image folder, for resolving ids with or without extensions."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, list[Path]] = defaultdict(list)
        if images_dir.is_dir():
            for entry in sorted(images_dir.iterdir()):
                if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
                    self.by_name[entry.name] = entry
                    self.by_stem[entry.stem].append(entry)

    def lookup(self, raw_id: str) -> list[Path]:
        name = raw_id.strip()
        if name in self.by_name:
            return [self.by_name[name]]
        return list(self.by_stem.get(normalise_image_id(name), []))


def list_images(images_dir: Path) -> list[Path]:
    """Image files directly inside ``images_dir`` (by extension), sorted by name."""
    if not images_dir.is_dir():
        raise InputTableError(f"{images_dir}: image folder not found")
    return sorted(
        p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _rational(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return float("nan")


def exif_gps_degrees(gps: dict[int, Any]) -> tuple[float, float] | None:
    """Decimal (lat, lon) from an EXIF GPS IFD, or ``None`` if it has no usable position."""
    try:
        lat_dms, lon_dms = gps[2], gps[4]
    except KeyError:
        return None
    try:
        lat = sum(_rational(v) / 60**i for i, v in enumerate(lat_dms))
        lon = sum(_rational(v) / 60**i for i, v in enumerate(lon_dms))
    except TypeError:
        return None
    if str(gps.get(1, "N")).strip().upper().startswith("S"):
        lat = -lat
    if str(gps.get(3, "E")).strip().upper().startswith("W"):
        lon = -lon
    if not (np.isfinite(lat) and np.isfinite(lon)):
        return None
    return lat, lon


def inspect_image(
    path: Path, settings: IngestSettings, read_gps: bool = False
) -> ImageFacts | tuple[str, str]:
    """Hash and fully decode one image; return its facts or ``(reason, detail)``.

    Size limits are checked from the header before any pixel is decoded, so a decompression
    bomb costs nothing. Truncated files fail in the full decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing_file", "the image file does not exist"
    except OSError as exc:
        return "unreadable_file", f"cannot read the file: {exc.strerror or exc}"
    if not data:
        return "undecodable", "the file is empty (0 bytes)"
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > settings.max_image_pixels:
                    return (
                        "decompression_bomb",
                        f"{width}x{height} = {width * height:,} pixels exceeds "
                        f"ingest.max_image_pixels = {settings.max_image_pixels:,}",
                    )
                if min(width, height) < settings.min_side_px:
                    return (
                        "too_small",
                        f"{width}x{height} is smaller than ingest.min_side_px = "
                        f"{settings.min_side_px} (a placeholder or thumbnail?)",
                    )
                if image.mode in HIGH_BIT_DEPTH_MODES and settings.high_bit_depth == "reject":
                    return (
                        "high_bit_depth",
                        f"pixel mode {image.mode} is not 8-bit and ingest.high_bit_depth = reject",
                    )
                gps = exif_gps_degrees(dict(image.getexif().get_ifd(0x8825))) if read_gps else None
                image_format, mode = image.format or "unknown", image.mode
                image.load()
    except UnidentifiedImageError:
        return "undecodable", "not an image format Pillow can read"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses headers beyond twice its own limit before we see the size.
        return (
            "decompression_bomb",
            f"{exc} (ingest.max_image_pixels = {settings.max_image_pixels:,})",
        )
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return "undecodable", f"decoding failed: {exc}"
    return ImageFacts(
        sha256=digest,
        size_bytes=len(data),
        width=width,
        height=height,
        format=image_format,
        mode=mode,
        exif_lat=gps[0] if gps else None,
        exif_lon=gps[1] if gps else None,
    )


# ---------------------------------------------------------------------------------------------
# The whole stage


def _display(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _candidates_from_table(
    table_path: Path, images_dir: Path, column_map: ColumnMap
) -> tuple[list[Candidate], list[Rejection], list[str]]:
    table = read_metadata_table(table_path)
    cols = resolve_columns(table.columns, column_map, str(table_path))
    folder = _FolderIndex(images_dir)
    source = str(table_path)
    candidates: list[Candidate] = []
    rejections: list[Rejection] = []
    referenced: set[Path] = set()

    ids = table[cols.id].to_list() if cols.id else [None] * table.height
    files = table[cols.file].to_list() if cols.file else [None] * table.height
    # resolve_columns raised unless both coordinate columns were found.
    lats = table[str(cols.lat)].to_list()
    lons = table[str(cols.lon)].to_list()
    for index, (raw_id, raw_file, raw_lat, raw_lon) in enumerate(
        zip(ids, files, lats, lons, strict=True)
    ):
        row = index + 1  # 1-based data row (the header is not counted)
        raw_file = (raw_file or "").strip()
        if raw_id is None or not raw_id.strip():
            raw_id = PurePosixPath(raw_file).name if raw_file else ""
        image_id = normalise_image_id(raw_id)

        def reject(
            reason: str,
            detail: str,
            path: str | None = None,
            *,
            _row: int = row,
            _id: str = image_id,
        ) -> None:
            rejections.append(Rejection(source, _row, _id or None, path, reason, detail))

        problem = unsafe_id_reason(image_id)
        if problem:
            reject("unsafe_id" if image_id else "empty_id", f"{problem}: {raw_id!r}")
            continue
        if raw_file:
            given = Path(raw_file)
            options = (
                [given]
                if given.is_absolute()
                else [table_path.parent / given, images_dir / given, images_dir / given.name]
            )
            path = next((p for p in options if p.is_file()), options[0])
            if not path.is_file():
                reject("missing_file", f"file {raw_file!r} not found", raw_file)
                continue
        else:
            matches = folder.lookup(raw_id)
            if not matches:
                reject("missing_file", f"no file named {raw_id!r}[.ext] in {images_dir}")
                continue
            if len(matches) > 1:
                names = ", ".join(p.name for p in matches)
                reject("ambiguous_file", f"several files match the id: {names}")
                continue
            path = matches[0]
        referenced.add(path.resolve())

        lat, lon = parse_coordinate(raw_lat), parse_coordinate(raw_lon)
        if lat is None or lon is None:
            which = [n for n, v in (("lat", lat), ("lon", lon)) if v is None]
            shown = {"lat": raw_lat, "lon": raw_lon}
            reject(
                "missing_coordinates",
                ", ".join(f"{n} = {shown[n]!r} is empty or not a number" for n in which),
                path.as_posix(),
            )
            continue
        if not -90.0 <= lat <= 90.0:
            reject("bad_latitude", f"lat = {raw_lat} is outside [-90, 90]", path.as_posix())
            continue
        if not -180.0 <= lon <= 180.0:
            reject("bad_longitude", f"lon = {raw_lon} is outside [-180, 180]", path.as_posix())
            continue
        candidates.append(Candidate(image_id, path, row, lat, lon))

    unlabelled = sorted(p.name for p in folder.by_name.values() if p.resolve() not in referenced)
    return candidates, rejections, unlabelled


def _candidates_from_folder(images_dir: Path) -> tuple[list[Candidate], list[Rejection]]:
    candidates, rejections = [], []
    for path in list_images(images_dir):
        image_id = normalise_image_id(path.name)
        problem = unsafe_id_reason(image_id)
        if problem:
            rejections.append(
                Rejection(str(images_dir), None, image_id, path.as_posix(), "unsafe_id", problem)
            )
            continue
        candidates.append(Candidate(image_id, path, None, None, None))
    return candidates, rejections


def _split_duplicates(
    candidates: list[Candidate], source: str
) -> tuple[list[Candidate], list[Rejection]]:
    """Drop exact repeats (kept once) and refuse ids used for different files or places."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for cand in candidates:
        groups[cand.image_id].append(cand)
    kept, rejections = [], []
    for image_id, group in groups.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        rows = ", ".join(str(c.source_row) if c.source_row else c.path.name for c in group)
        distinct = {(c.path.resolve(), c.lat, c.lon) for c in group}
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
        rejections += [
            Rejection(source, dup.source_row, image_id, dup.path.as_posix(), reason, detail)
            for dup in rejected
        ]
    kept.sort(key=lambda c: (c.source_row or 0, c.image_id))
    return kept, rejections


def ingest(
    images_dir: Path,
    metadata_table: Path | None,
    column_map: ColumnMap,
    settings: IngestSettings,
    split_mode: SplitMode = "hash",
    path_base: Path | None = None,
) -> IngestResult:
    """Build the manifest of one dataset.

    ``metadata_table=None`` reads coordinates from each image's EXIF GPS block.
    ``split_mode="all_test"`` is for benchmarks, whose every image is evaluated.
    Paths in the outputs are written relative to ``path_base`` when they lie under it.
    Raises :class:`GeolocsftError` when the policy is ``fail`` and any row is unusable, or when
    no image at all is usable.
    """
    if metadata_table is not None:
        candidates, rejections, unlabelled = _candidates_from_table(
            metadata_table, images_dir, column_map
        )
        source = str(metadata_table)
    else:
        candidates, rejections = _candidates_from_folder(images_dir)
        unlabelled = []
        source = str(images_dir)
    candidates, duplicate_rejections = _split_duplicates(candidates, source)
    rejections.extend(duplicate_rejections)

    workers = settings.workers or os.cpu_count() or 1
    read_gps = metadata_table is None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = list(
            tqdm(
                pool.map(lambda c: inspect_image(c.path, settings, read_gps), candidates),
                total=len(candidates),
                desc=f"checking images in {images_dir}",
                unit="img",
                mininterval=2.0,
                disable=None,
            )
        )

    rows: list[dict[str, Any]] = []
    for cand, facts in zip(candidates, checked, strict=True):
        shown_path = _display(cand.path, path_base)
        if isinstance(facts, tuple):
            reason, detail = facts
            rejections.append(
                Rejection(source, cand.source_row, cand.image_id, shown_path, reason, detail)
            )
            continue
        lat, lon, coord_source = cand.lat, cand.lon, "table"
        if read_gps:
            lat, lon, coord_source = facts.exif_lat, facts.exif_lon, "exif"
            if lat is None or lon is None or not valid_coordinates(lat, lon):
                rejections.append(
                    Rejection(
                        source,
                        None,
                        cand.image_id,
                        shown_path,
                        "no_exif_gps",
                        "no metadata table was given and the image has no usable EXIF GPS position",
                    )
                )
                continue
        rows.append(
            {
                "image_id": cand.image_id,
                "path": shown_path,
                "sha256": facts.sha256,
                "bytes": facts.size_bytes,
                "width": facts.width,
                "height": facts.height,
                "format": facts.format,
                "mode": facts.mode,
                "lat": lat,
                "lon": lon,
                "coord_source": coord_source,
                "source_row": cand.source_row,
            }
        )

    manifest = pl.DataFrame(rows, schema={k: v for k, v in MANIFEST_SCHEMA.items() if k != "split"})
    if split_mode == "hash":
        splits = assign_split(manifest["image_id"], settings.test_fraction, settings.split_salt)
    else:
        splits = ["test" if split_mode == "all_test" else "train"] * manifest.height
    manifest = manifest.with_columns(pl.Series("split", splits, dtype=pl.String))

    places = reverse_geocode(manifest["lat"], manifest["lon"], settings.reverse_geocode_max_km)
    manifest = pl.concat([manifest, places], how="horizontal")

    rejected = pl.DataFrame([asdict(r) for r in rejections], schema=REJECTED_SCHEMA).sort(
        "row", "image_id", nulls_last=True
    )
    summary = _summary(manifest, rejected, unlabelled, settings, split_mode)
    _enforce_policy(rejections, manifest, settings, source)
    return IngestResult(manifest=manifest, rejected=rejected, summary=summary)


def _summary(
    manifest: pl.DataFrame,
    rejected: pl.DataFrame,
    unlabelled: list[str],
    settings: IngestSettings,
    split_mode: SplitMode,
) -> dict[str, Any]:
    same_bytes = (
        manifest.group_by("sha256")
        .agg(pl.col("image_id").sort())
        .filter(pl.col("image_id").list.len() > 1)["image_id"]
        .to_list()
    )
    if same_bytes:
        log.warning("%d groups of ids share identical image bytes: %s", len(same_bytes), same_bytes)
    if unlabelled:
        log.warning(
            "%d images in the folder have no row in the metadata table (not ingested), e.g. %s",
            len(unlabelled),
            ", ".join(unlabelled[:5]),
        )
    return {
        "images": manifest.height,
        "rejected": rejected.height,
        "rejected_by_reason": dict(Counter(rejected["reason"].to_list()).most_common()),
        "split_mode": split_mode,
        "splits": dict(Counter(manifest["split"].to_list()).most_common()),
        "countries": manifest["country_code"].n_unique()
        - int(manifest["country_code"].has_nulls()),
        "without_country": int(manifest["country_code"].null_count()),
        "identical_bytes_groups": same_bytes,
        "unlabelled_images": len(unlabelled),
        "unlabelled_examples": unlabelled[:20],
        "settings": asdict(settings),
    }


def _enforce_policy(
    rejections: list[Rejection], manifest: pl.DataFrame, settings: IngestSettings, source: str
) -> None:
    if rejections and settings.on_bad_input == "fail":
        shown = "\n  ".join(r.describe() for r in rejections[:20])
        more = f"\n  … and {len(rejections) - 20} more" if len(rejections) > 20 else ""
        raise GeolocsftError(
            f"{len(rejections)} unusable input rows/images and ingest.on_bad_input = fail:\n  "
            f"{shown}{more}\nFix them, or set ingest.on_bad_input: quarantine to set them aside "
            "in rejected.csv."
        )
    if manifest.height == 0:
        detail = "\n  ".join(r.describe() for r in rejections[:10])
        raise GeolocsftError(
            f"{source}: no usable image"
            + (f"; the first problems:\n  {detail}" if detail else " (the input is empty)")
        )


def write_outputs(
    result: IngestResult, manifest_path: Path, rejected_path: Path, summary_path: Path
) -> None:
    """Write the manifest (Parquet), the rejection report (CSV) and the summary (JSON)."""
    for path in (manifest_path, rejected_path, summary_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    result.manifest.write_parquet(manifest_path, statistics=True)
    result.rejected.write_csv(rejected_path)
    atomic_write_json(summary_path, result.summary)
