"""Checking one image: hash, size limits, full decode, EXIF GPS and a perceptual hash, memoized.

:func:`inspect_image` reads a file once: its sha256, then (from the header, before any pixel is
decoded) the size limits, then a full decode, which finds truncated files. The same decode gives
the EXIF GPS position and ``phash``, a 64-bit difference hash (dHash) of the upright 8-bit RGB
image as 16 hex digits: greyscale, resized to 9x8 (Lanczos), one bit per horizontally adjacent
pair (1 where the right pixel is brighter), row by row, most significant bit first (the
convention of ``imagehash.dhash``). Copies of a photo that were re-encoded, resized or slightly
edited have hashes a few bits apart (the Hamming distance), different photos about 32.

:func:`check_images` runs it for many files and keeps each result in the per-item memo
(:class:`geolocsft.memo.ItemTable`), keyed by the file's relative path, size and mtime (the
quick check of rsync and make; not the inode, so a corpus copied with its mtimes, e.g. to a
node's scratch disk, is still known): an unchanged file costs a stat (done by the folder scan),
not a read. The memo's version covers the limits that shape a result and the code of this
module (:func:`memo_version`), so changing either starts afresh. A file modified less than
:data:`UNSETTLED_SECONDS` before it was read is checked but not memoized (it could change again
within the file system's clock tick).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from tqdm import tqdm

from geolocsft.codegraph import module_code_version
from geolocsft.images import HIGH_BIT_DEPTH_MODES, to_rgb8
from geolocsft.memo import ItemTable, memo_version
from geolocsft.parallel import map_in_processes

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

#: The facts of a checked file (``reason``/``detail`` set when it is unusable).
FACTS_SCHEMA: dict[str, type[pl.DataType]] = {
    "sha256": pl.String,
    "bytes": pl.Int64,
    "width": pl.Int64,
    "height": pl.Int64,
    "format": pl.String,
    "mode": pl.String,
    "exif_lat": pl.Float64,
    "exif_lon": pl.Float64,
    "phash": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}
IMAGE_CHECKS_KIND = "ingest-checks"
#: Files modified this recently are checked but not memoized.
UNSETTLED_SECONDS = 2.0
#: Reasons that depend on the moment, not on the file's content: never memoized.
TRANSIENT_REASONS = frozenset({"missing_file", "unreadable_file"})
_FLUSH_EVERY = 20_000
# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE"}
_ORIENTATION |= {6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class CheckLimits:
    """The ``ingest`` settings that decide whether an image is usable."""

    max_image_pixels: int
    min_side_px: int
    high_bit_depth: str  # "convert" or "reject"


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


def dhash_hex(image: Image, orientation: int | None = None) -> str:
    """The dHash (see the module doc) of ``image`` turned upright by EXIF ``orientation``."""
    from PIL import Image as PILImage

    grey = image.convert("L") if image.mode in ("RGB", "L") else to_rgb8(image).convert("L")
    if orientation in _ORIENTATION:
        grey = grey.transpose(getattr(PILImage.Transpose, _ORIENTATION[orientation]))
    small = np.asarray(grey.resize((9, 8), PILImage.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def _bomb_detail(exc: BaseException, limit: int) -> str:
    found = _PILLOW_PIXELS.search(str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else str(exc)
    return (
        f"{pixels} exceeds ingest.max_image_pixels = {limit:,} "
        "(refused from the header, before decoding)"
    )


def inspect_image(path: Path, limits: CheckLimits) -> dict[str, Any]:
    """The facts of one file (:data:`FACTS_SCHEMA`); ``reason`` and ``detail`` say why it is
    unusable, or are None. Pillow's own pixel limit must be ``limits.max_image_pixels``
    (:func:`check_images` sets it)."""
    from PIL import Image, UnidentifiedImageError

    facts: dict[str, Any] = dict.fromkeys(FACTS_SCHEMA)

    def unusable(reason: str, detail: str) -> dict[str, Any]:
        return {**facts, "reason": reason, "detail": detail}

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return unusable("missing_file", "the image file does not exist")
    except OSError as exc:
        return unusable("unreadable_file", f"cannot read the file: {exc.strerror or exc}")
    facts["bytes"] = len(data)
    if not data:
        return unusable("undecodable", "the file is empty (0 bytes)")
    facts["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                facts |= {"width": width, "height": height}
                facts |= {"format": image.format or "unknown", "mode": image.mode}
                if width * height > limits.max_image_pixels:
                    return unusable(
                        "decompression_bomb",
                        f"{width}x{height} = {width * height:,} pixels exceeds "
                        f"ingest.max_image_pixels = {limits.max_image_pixels:,}",
                    )
                if min(width, height) < limits.min_side_px:
                    return unusable(
                        "too_small",
                        f"{width}x{height} is smaller than ingest.min_side_px = "
                        f"{limits.min_side_px} (a placeholder or thumbnail?)",
                    )
                if image.mode in HIGH_BIT_DEPTH_MODES and limits.high_bit_depth == "reject":
                    return unusable(
                        "high_bit_depth",
                        f"pixel mode {image.mode} is not 8-bit and ingest.high_bit_depth = reject",
                    )
                exif = image.getexif()
                gps = exif_gps_degrees(dict(exif.get_ifd(0x8825)))
                if gps:
                    facts |= {"exif_lat": gps[0], "exif_lon": gps[1]}
                orientation = exif.get(0x0112)
                image.load()
                facts["phash"] = dhash_hex(image, orientation)
    except UnidentifiedImageError:
        return unusable("undecodable", "not an image format Pillow can read")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return unusable("decompression_bomb", _bomb_detail(exc, limits.max_image_pixels))
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:
        return unusable("undecodable", f"decoding failed: {exc}")
    return facts


def _inspect_file(file: str, limits: CheckLimits) -> dict[str, Any]:
    return inspect_image(Path(file), limits)


def checks_memo(root: Path, limits: CheckLimits) -> ItemTable:
    """The memo of image checks under the limits (and this module's code) in force."""
    version = memo_version(
        limits.max_image_pixels,
        limits.min_side_px,
        limits.high_bit_depth,
        module_code_version("image_check"),
    )
    return ItemTable(root, IMAGE_CHECKS_KIND, version)


def check_images(
    files: pl.DataFrame,
    limits: CheckLimits,
    memo_root: Path | None,
    workers: int,
    desc: str = "checking images",
) -> pl.DataFrame:
    """The facts of every row of ``files`` (columns ``file``: the path to read, ``key``: its
    memo key or null, ``mtime_ns``), appended as the columns of :data:`FACTS_SCHEMA`, in order,
    and ``checked_now`` (whether the file was read in this call, not answered by the memo).

    Rows whose key is in the memo are not read; the others are checked in ``workers`` processes
    and stored (every :data:`_FLUSH_EVERY` results, so a killed job keeps what it did).
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels  # Pillow's limit follows the setting
    files = files.drop([name for name in FACTS_SCHEMA if name in files.columns])
    memo = checks_memo(memo_root, limits) if memo_root is not None else None
    known = memo.load(files["key"].drop_nulls()) if memo is not None else None
    if known is not None and known.height:
        joined = files.join(
            known.select("key", *FACTS_SCHEMA), on="key", how="left", maintain_order="left"
        )
    else:
        joined = files.with_columns(
            pl.lit(None, dtype=dtype).alias(name) for name, dtype in FACTS_SCHEMA.items()
        )
    missing = joined.select(pl.col("sha256").is_null() & pl.col("reason").is_null())
    todo = np.flatnonzero(missing.to_series().to_numpy())
    log.info(
        "%d of %d images checked before (memo), %d to check",
        files.height - len(todo),
        files.height,
        len(todo),
    )
    if len(todo) == 0:
        return joined.with_columns(pl.lit(False).alias("checked_now"))
    racy_after = time.time_ns() - int(UNSETTLED_SECONDS * 1e9)
    done: list[pl.DataFrame] = []
    inspect = partial(_inspect_file, limits=limits)
    with tqdm(total=len(todo), desc=desc, unit="img", mininterval=2.0, disable=None) as bar:
        # A chunk at a time: a million images never become a million futures or dicts at once,
        # and a killed job keeps the chunks it stored.
        for start in range(0, len(todo), _FLUSH_EVERY):
            rows = todo[start : start + _FLUSH_EVERY]
            facts = []
            chunk_files = joined["file"].gather(rows).to_list()
            for item in map_in_processes(inspect, chunk_files, max(1, workers)):
                facts.append(item)
                bar.update()
            chunk = pl.DataFrame(facts, schema=FACTS_SCHEMA)
            done.append(chunk)
            if memo is not None:
                settled = chunk.with_columns(
                    joined["key"].gather(rows), joined["mtime_ns"].gather(rows)
                ).filter(
                    pl.col("key").is_not_null()
                    & (pl.col("mtime_ns") < racy_after)
                    & (
                        pl.col("reason").is_null()
                        | ~pl.col("reason").is_in(sorted(TRANSIENT_REASONS))
                    )
                )
                memo.add(settled.select("key", *FACTS_SCHEMA))
    fresh = pl.concat(done)
    return joined.with_columns(
        *(joined[name].scatter(todo, fresh[name]) for name in FACTS_SCHEMA),
        pl.Series("checked_now", missing.to_series(), dtype=pl.Boolean),
    )


def default_workers(configured: int) -> int:
    """``ingest.workers``: 0 = one thread per CPU core."""
    return configured or os.cpu_count() or 1
