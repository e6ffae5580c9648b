"""Image features of the kNN baseline, per item and memoized: a rerun computes only new images.

A feature vector is a joint RGB colour histogram plus a tiny greyscale thumbnail, each
L2-normalised. It depends only on the image's bytes, the feature settings and this module's
code, so it is kept in the per-item memo (:class:`geolocsft.memo.ItemTable`) keyed by the
image's ``sha256``, under a version made of the settings and
``module_code_version("features")``: adding 100 images to a corpus computes 100 vectors and
rebuilds the declared features file from the memo, byte-identical to a full recomputation.

With ``scale_out.parts > 1`` the images of a dataset are split into parts by
:func:`geolocsft.layout.part_of` of their id; each part is its own job (its own SLURM job on a
cluster), and :func:`gather_features` puts the parts together in manifest order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import polars as pl
from tqdm import tqdm

from geolocsft.codegraph import module_code_version
from geolocsft.errors import BadImageError, GeolocsftError
from geolocsft.images import open_upright_rgb
from geolocsft.layout import part_of
from geolocsft.memo import ItemTable, memo_version
from geolocsft.parallel import map_in_processes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSettings:
    """Image features of the kNN baseline (``baselines.knn`` in config)."""

    CONFIG_SECTION: ClassVar[str] = "baselines.knn"

    thumbnail_px: int
    histogram_bins: int

    @property
    def width(self) -> int:
        return self.histogram_bins**3 + self.thumbnail_px**2


#: The features look at a small version of the photo: a JPEG is decoded at a reduced DCT scale
#: (1/2 to 1/8) that keeps both sides at least FEATURE_DRAFT_PX, then any photo is reduced by an
#: integer box filter to a long side of at most FEATURE_MAX_SIDE_PX.
FEATURE_DRAFT_PX = 96
FEATURE_MAX_SIDE_PX = 256


def image_features(path: Path, settings: FeatureSettings) -> npt.NDArray[np.float32]:
    """A joint RGB colour histogram plus a tiny greyscale thumbnail, each L2-normalised."""
    from PIL import Image

    try:
        rgb = open_upright_rgb(path, draft_px=FEATURE_DRAFT_PX)
    except BadImageError as exc:
        raise BadImageError(f"{exc} (kNN features)") from exc
    factor = -(-max(rgb.size) // FEATURE_MAX_SIDE_PX)
    if factor > 1:
        rgb = rgb.reduce(factor)
    bins = settings.histogram_bins
    level = np.arange(256, dtype=np.int32) * bins // 256
    pixels = level[np.asarray(rgb, dtype=np.uint8)]
    codes = (pixels[..., 0] * bins + pixels[..., 1]) * bins + pixels[..., 2]
    histogram = np.bincount(codes.ravel(), minlength=bins**3).astype(np.float64)
    side = settings.thumbnail_px
    thumb = np.asarray(rgb.convert("L").resize((side, side), Image.Resampling.BOX), np.float64)
    thumb = thumb.ravel() - thumb.mean()
    parts = [v / n if (n := np.linalg.norm(v)) > 0 else v for v in (histogram, thumb)]
    return np.concatenate(parts).astype(np.float32)


def feature_memo(memo_dir: Path, settings: FeatureSettings) -> ItemTable:
    """The memo of feature vectors by image sha256, for these settings and this code."""
    version = memo_version("knn-features", asdict(settings), module_code_version("features"))
    return ItemTable(memo_dir, "knn_features", version)


def new_contents(manifest_path: Path, settings: FeatureSettings, memo_dir: Path) -> int | None:
    """How many distinct image contents of a manifest :func:`compute_features` would compute
    (not in the memo); None while the manifest is not made yet."""
    if not manifest_path.is_file():
        return None
    contents = pl.read_parquet(manifest_path, columns=["sha256"])["sha256"]
    return feature_memo(memo_dir, settings).count_missing(contents)


def _empty(settings: FeatureSettings, key: str) -> pl.DataFrame:
    return pl.DataFrame(schema={key: pl.String, "features": pl.Array(pl.Float32, settings.width)})


def _compute(paths: Sequence[str], settings: FeatureSettings, workers: int) -> np.ndarray:
    if not paths:
        return np.empty((0, settings.width), np.float32)
    # Filled in place: a million small arrays held in a list, then stacked, cost twice the
    # memory of the result.
    vectors = np.empty((len(paths), settings.width), np.float32)
    computed = map_in_processes(partial(_features_of_file, settings=settings), list(paths), workers)
    for row, vector in enumerate(
        tqdm(
            computed,
            total=len(paths),
            desc="image features",
            unit="img",
            mininterval=2.0,
            disable=None,
        )
    ):
        vectors[row] = vector
    return vectors


def _features_of_file(path: str, settings: FeatureSettings) -> npt.NDArray[np.float32]:
    return image_features(Path(path), settings)


def compute_features(
    manifest: pl.DataFrame,
    settings: FeatureSettings,
    memo_dir: Path | None = None,
    workers: int | None = None,
) -> pl.DataFrame:
    """Feature vectors of every manifest image: columns ``image_id``, ``features``.

    With ``memo_dir``, vectors of contents already in the memo are reused and only the others
    are computed (each distinct content once) and stored.
    """
    workers = workers or os.cpu_count() or 1
    memo = feature_memo(memo_dir, settings) if memo_dir is not None else None
    known = memo.load(manifest["sha256"]) if memo is not None else None
    have = known if known is not None else _empty(settings, "key")
    todo = (
        manifest.select("sha256", "path")
        .join(have.select(pl.col("key").alias("sha256")), on="sha256", how="anti")
        .unique("sha256", keep="first", maintain_order=True)
    )
    new = pl.DataFrame(
        {
            "key": todo["sha256"],
            "features": pl.Series(
                _compute(todo["path"].to_list(), settings, workers),
                dtype=pl.Array(pl.Float32, settings.width),
            ),
        }
    )
    if memo is not None:
        memo.add(new)
    log.info(
        "image features: %d computed, %d reused from the memo (%d images)",
        new.height,
        have.height,
        manifest.height,
    )
    # Each image's row among the vectors by a join of the keys only, then one gather of the
    # vectors: a join of the vectors themselves held them twice more (at a million, 0.5 GB each).
    vectors = pl.concat([have, new], rechunk=False)
    del known, have
    rows = manifest.select("sha256").join(
        vectors.select(pl.col("key").alias("sha256")).with_row_index("row"),
        on="sha256",
        how="left",
        maintain_order="left",
    )["row"]
    return pl.DataFrame(
        {"image_id": manifest["image_id"], "features": vectors["features"].gather(rows)}
    )


def part_rows(manifest: pl.DataFrame, part: int, parts: int) -> pl.DataFrame:
    """The manifest rows of one part (``part_of(image_id, parts) == part``)."""
    if not 0 <= part < parts:
        raise GeolocsftError(f"part {part} is not one of 0..{parts - 1}")
    chosen = [part_of(image_id, parts) == part for image_id in manifest["image_id"]]
    return manifest.filter(pl.Series(chosen, dtype=pl.Boolean))


def gather_features(manifest: pl.DataFrame, parts: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The parts' features in manifest order; an image in no part, or in two, is an error."""
    every = pl.concat(list(parts)) if parts else pl.DataFrame(schema={"image_id": pl.String})
    repeated = every.filter(pl.col("image_id").is_duplicated())["image_id"].unique().to_list()
    if repeated:
        raise GeolocsftError(f"image(s) {sorted(repeated)[:5]} are in more than one part")
    joined = manifest.select("image_id").join(
        every, on="image_id", how="left", maintain_order="left"
    )
    missing = joined.filter(pl.col("features").is_null())["image_id"].to_list()
    if missing:
        raise GeolocsftError(
            f"{len(missing)} image(s) have no features in any part, e.g. {missing[:5]}: "
            "rerun the image_features_part jobs"
        )
    return joined
