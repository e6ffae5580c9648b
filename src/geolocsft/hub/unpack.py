"""Unpacking a fetched Hub dataset into the layout ingest reads: an image folder and one metadata
table (``image_id, file, lat, lon, source_file, source_row``).

It understands Parquet shards with an image column (:mod:`geolocsft.hub.shards`) and image
archives or image files with a metadata table (:mod:`geolocsft.hub.archives`). The output is
deterministic (same input, same bytes) and every row of the source is kept: rows with unusable
coordinates or images are written as they are, for ingest to quarantine (or, with
``on_bad_input: fail``, to stop the run); problems unpacking can see (undecodable image bytes,
one id for different images) are logged with their file and row, or stop the run under ``fail``.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from geolocsft.errors import GeolocsftError
from geolocsft.hub.archives import unpack_archives
from geolocsft.hub.shards import unpack_parquet
from geolocsft.hub.unpacking import ImageWriter, UnpackResult, UnpackSettings, coordinates_missing

log = logging.getLogger(__name__)


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
    writer = ImageWriter(images_dir)
    if settings.format == "parquet":
        if settings.metadata:
            raise GeolocsftError(
                "metadata must be null with format: parquet (the shards hold id, lat and lon)"
            )
        rows = unpack_parquet(files, writer, settings, result)
    elif settings.format == "archives":
        with tempfile.TemporaryDirectory(prefix="geolocsft-unpack-") as scratch:
            rows = unpack_archives(files, writer, settings, result, Path(scratch))
    else:
        raise GeolocsftError(f"format must be 'archives' or 'parquet', not {settings.format!r}")
    result.rows = len(rows)
    result.images = writer.written
    result.rows_without_coordinates = sum(coordinates_missing(r["lat"], r["lon"]) for r in rows)
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
