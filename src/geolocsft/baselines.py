"""Floor baselines that every accuracy table carries: the training medoid and image-feature kNN.

Neither looks at anything a vision-language model would: they show what a fine-tuned model
must beat. Both write the same prediction table as every other predictor
(``image_id, pred_lat, pred_lon, true_lat, true_lon, raw_answer``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import polars as pl
from tqdm import tqdm

from geolocsft.errors import BadImageError, GeolocsftError
from geolocsft.geo import geodesic_medoid_index
from geolocsft.images import open_upright_rgb
from geolocsft.predictions import prediction_table
from geolocsft.splits import training_rows

#: Above this many training points the medoid is searched in a fixed-seed sample of them.
MEDOID_SAMPLE = 5000


@dataclass(frozen=True)
class FeatureSettings:
    """Image features of the kNN baseline (``baselines.knn`` in config)."""

    CONFIG_SECTION: ClassVar[str] = "baselines.knn"

    thumbnail_px: int
    histogram_bins: int


def image_features(path: Path, settings: FeatureSettings) -> npt.NDArray[np.float32]:
    """A joint RGB colour histogram plus a tiny greyscale thumbnail, each L2-normalised."""
    from PIL import Image

    try:
        rgb = open_upright_rgb(path)
    except BadImageError as exc:
        raise BadImageError(f"{exc} (kNN features)") from exc
    rgb.thumbnail((256, 256))
    pixels = np.asarray(rgb, dtype=np.uint8).reshape(-1, 3)
    bins = settings.histogram_bins
    codes = (pixels.astype(np.int64) * bins // 256) @ np.array([bins * bins, bins, 1])
    histogram = np.bincount(codes, minlength=bins**3).astype(np.float64)
    side = settings.thumbnail_px
    thumb = np.asarray(rgb.convert("L").resize((side, side), Image.Resampling.BOX), np.float64)
    thumb = thumb.ravel() - thumb.mean()
    parts = [v / n if (n := np.linalg.norm(v)) > 0 else v for v in (histogram, thumb)]
    return np.concatenate(parts).astype(np.float32)


def compute_features(manifest: pl.DataFrame, settings: FeatureSettings) -> pl.DataFrame:
    """Feature vectors of every manifest image: columns ``image_id``, ``features``."""
    paths = [Path(p) for p in manifest["path"]]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        vectors = list(
            tqdm(
                pool.map(lambda p: image_features(p, settings), paths),
                total=len(paths),
                desc="image features",
                unit="img",
                mininterval=2.0,
                disable=None,
            )
        )
    width = len(vectors[0]) if vectors else settings.histogram_bins**3 + settings.thumbnail_px**2
    return pl.DataFrame(
        {
            "image_id": manifest["image_id"],
            "features": pl.Series(
                np.stack(vectors) if vectors else np.empty((0, width), np.float32),
                dtype=pl.Array(pl.Float32, width),
            ),
        }
    )


def training_set(manifest: pl.DataFrame) -> pl.DataFrame:
    """The train split of a corpus manifest, or an error when it is empty."""
    train = training_rows(manifest)
    if train.height == 0:
        raise GeolocsftError(
            "the corpus has no training images (check ingest.test_fraction and the rejection "
            "report): the baselines have nothing to learn from"
        )
    return train


def predict_medoid(train: pl.DataFrame, targets: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """Every target gets the geodesic medoid of the training coordinates."""
    lat, lon = train["lat"].to_numpy(), train["lon"].to_numpy()
    if len(lat) > MEDOID_SAMPLE:
        pick = np.random.default_rng(seed).choice(len(lat), MEDOID_SAMPLE, replace=False)
        lat, lon = lat[pick], lon[pick]
    best = geodesic_medoid_index(lat, lon)
    answer = (
        f"training-set geodesic medoid of {train.height} images: "
        f"lat {lat[best]:.6f}, lon {lon[best]:.6f}"
    )
    n = targets.height
    return prediction_table(targets, np.full(n, lat[best]), np.full(n, lon[best]), [answer] * n)


def predict_knn(
    train: pl.DataFrame,
    train_features: pl.DataFrame,
    targets: pl.DataFrame,
    target_features: pl.DataFrame,
    neighbors: int,
) -> pl.DataFrame:
    """Each target gets the geodesic medoid of its ``neighbors`` most similar training images."""
    from sklearn.neighbors import NearestNeighbors

    def matrix(rows: pl.DataFrame, features: pl.DataFrame, what: str) -> npt.NDArray[np.float32]:
        joined = rows.select("image_id").join(features, on="image_id", how="left")
        missing = joined.filter(pl.col("features").is_null())["image_id"].to_list()
        if missing:
            raise GeolocsftError(f"no {what} features for images {missing[:5]}: rerun features")
        return joined["features"].to_numpy().astype(np.float32)

    train_x = matrix(train, train_features, "training")
    target_x = matrix(targets, target_features, "target")
    k = min(neighbors, train.height)
    if targets.height == 0:
        return prediction_table(targets, [], [], [])
    index = NearestNeighbors(n_neighbors=k).fit(train_x)
    distances, neighbours = index.kneighbors(target_x)
    train_lat, train_lon = train["lat"].to_numpy(), train["lon"].to_numpy()
    train_ids = train["image_id"].to_list()
    pred_lat, pred_lon, raw = [], [], []
    for row_dist, row_idx in zip(distances, neighbours, strict=True):
        best = row_idx[geodesic_medoid_index(train_lat[row_idx], train_lon[row_idx])]
        pred_lat.append(train_lat[best])
        pred_lon.append(train_lon[best])
        raw.append(
            "nearest training images by colour/thumbnail features: "
            + ", ".join(f"{train_ids[i]} ({d:.3f})" for i, d in zip(row_idx, row_dist, strict=True))
        )
    return prediction_table(targets, pred_lat, pred_lon, raw)
