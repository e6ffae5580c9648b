"""Unpacking Parquet shards whose rows hold an image (the ``datasets`` ``Image`` feature, a struct
of ``bytes`` and ``path``, or plain binary) and the id, lat and lon of the photo."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl

from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.hub.unpacking import (
    IMAGE_COLUMN_CANDIDATES,
    ImageWriter,
    Problem,
    UnpackResult,
    UnpackSettings,
    cell_text,
    image_suffix,
    matches_any,
    pick_column,
)
from geolocsft.tables import (
    ID_COLUMN_CANDIDATES,
    LAT_COLUMN_CANDIDATES,
    LON_COLUMN_CANDIDATES,
    normalise_image_id,
    unsafe_id_reason,
)


def unpack_parquet(
    files: Mapping[str, Path],
    writer: ImageWriter,
    settings: UnpackSettings,
    result: UnpackResult,
) -> list[dict[str, Any]]:
    patterns = settings.images or ("*.parquet",)
    shards = [p for p in sorted(files) if matches_any(p, patterns)]
    if not shards:
        raise GeolocsftError(
            f"no Parquet shard among the fetched files matches images: {list(patterns)} "
            f"(fetched: {', '.join(sorted(files)) or 'nothing'})"
        )
    cols = settings.columns
    rows: list[dict[str, Any]] = []
    for shard in shards:
        path = files[shard]
        try:
            schema = pl.read_parquet_schema(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputTableError(f"{shard}: cannot read the Parquet shard: {exc}") from exc
        names = list(schema)

        def image_like(name: str, schema: Mapping[str, Any] = schema) -> bool:
            dtype = schema[name]
            if dtype == pl.Binary:
                return True
            return isinstance(dtype, pl.Struct) and "bytes" in [f.name for f in dtype.fields]

        if cols.image is not None:
            image_col = cols.image if cols.image in names else None
        else:
            # A column with a usual name that holds bytes, else the only column that does.
            by_lower = {n.strip().lower(): n for n in names if image_like(n)}
            named = [by_lower[c] for c in IMAGE_COLUMN_CANDIDATES if c in by_lower]
            found = [n for n in names if image_like(n)]
            image_col = named[0] if named else (found[0] if len(found) == 1 else None)
        shown = ", ".join(f"{n} ({schema[n]})" for n in names)
        if image_col is None or not image_like(image_col):
            asked = (
                f"column {cols.image!r} (columns.image in config)" if cols.image else "image column"
            )
            raise InputTableError(
                f"{shard}: no usable {asked}: it must hold image bytes (binary, or a struct with "
                f"'bytes' and 'path' like the datasets Image feature). The shard's columns are: "
                f"{shown}"
            )
        others = [n for n in names if n != image_col]
        lat_col = pick_column(others, cols.lat, LAT_COLUMN_CANDIDATES)
        lon_col = pick_column(others, cols.lon, LON_COLUMN_CANDIDATES)
        id_col = pick_column(others, cols.id, ID_COLUMN_CANDIDATES)
        problems = []
        for role, found_col, configured, candidates in (
            ("lat", lat_col, cols.lat, LAT_COLUMN_CANDIDATES),
            ("lon", lon_col, cols.lon, LON_COLUMN_CANDIDATES),
        ):
            if found_col is None:
                problems.append(
                    f"column {configured!r} (columns.{role} in config) is not in the shard"
                    if configured
                    else f"no {role} column (looked for {', '.join(candidates)}; "
                    f"set columns.{role})"
                )
        if cols.id is not None and id_col is None:
            problems.append(f"column {cols.id!r} (columns.id in config) is not in the shard")
        if problems:
            raise InputTableError(f"{shard}: " + "; ".join(problems) + f". Columns: {shown}")
        try:
            wanted = [c for c in (image_col, id_col, lat_col, lon_col) if c]
            table = pl.read_parquet(path, columns=wanted)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputTableError(f"{shard}: cannot read the Parquet shard: {exc}") from exc
        is_struct = isinstance(schema[image_col], pl.Struct)
        images = table[image_col].to_list()
        ids = table[id_col].cast(pl.String).to_list() if id_col else [None] * table.height
        lats = table[str(lat_col)].cast(pl.String).to_list()
        lons = table[str(lon_col)].cast(pl.String).to_list()
        shard_stem = PurePosixPath(shard).name.split(".")[0]
        for index, (value, raw_id, raw_lat, raw_lon) in enumerate(
            zip(images, ids, lats, lons, strict=True)
        ):
            row = index + 1
            data, inner_path = (
                ((value or {}).get("bytes"), (value or {}).get("path"))
                if is_struct
                else (value, None)
            )
            if data is None and inner_path:
                # The Image feature may point at a file of the repo instead of holding bytes.
                for candidate in (inner_path, str(PurePosixPath(shard).parent / inner_path)):
                    if candidate in files:
                        data = files[candidate].read_bytes()
                        break
            image_id = cell_text(raw_id).strip()
            if not image_id:
                image_id = (
                    PurePosixPath(inner_path).name if inner_path else f"{shard_stem}-{row:06d}"
                )
            lat, lon = cell_text(raw_lat), cell_text(raw_lon)
            file_name = ""
            safe = normalise_image_id(image_id)
            origin = f"{shard} row {row}"
            if data is None:
                result.problems.append(
                    Problem(shard, row, image_id, "missing_image", "the image cell holds no bytes")
                )
            elif unsafe_id_reason(safe) is None:
                suffix = image_suffix(data)
                if suffix is None:
                    result.problems.append(
                        Problem(
                            shard,
                            row,
                            image_id,
                            "undecodable",
                            f"the {len(data):,} image bytes are not an image Pillow can read "
                            f"(they start with {data[:8]!r})",
                        )
                    )
                name, clash = writer.add(safe + (suffix or ".bin"), data, origin)
                if clash:
                    result.problems.append(
                        Problem(
                            shard,
                            row,
                            image_id,
                            "duplicate_id",
                            f"the id is also used for a different image ({clash})",
                        )
                    )
                file_name = f"images/{name}"
            rows.append(
                {
                    "image_id": image_id,
                    "file": file_name,
                    "lat": lat,
                    "lon": lon,
                    "source_file": shard,
                    "source_row": row,
                }
            )
    return rows
