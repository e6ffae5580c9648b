"""Floor baselines that every accuracy table carries: the training medoid and image-feature kNN.

Neither looks at anything a vision-language model would: they show what a fine-tuned model
must beat. Both write the same prediction table as every other predictor
(``image_id, pred_lat, pred_lon, true_lat, true_lon, raw_answer``). Both learn from the corpus'
train split without the training images that are eval images (:mod:`geolocsft.leakage`).
The kNN features are :mod:`geolocsft.features`; the neighbour search is
:mod:`geolocsft.vector_index` (exact up to ``exact_max_train`` training images, an inverted-file
index above).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import polars as pl

from geolocsft.errors import GeolocsftError
from geolocsft.geo import geodesic_medoid_index, to_unit_vectors
from geolocsft.predictions import prediction_table
from geolocsft.splits import training_rows
from geolocsft.vector_index import nearest_neighbours

#: Above this many training points the medoid is searched in a fixed-seed sample of them.
MEDOID_SAMPLE = 5000
#: The manifest columns the baselines read (a million-row manifest holds many more).
BASELINE_MANIFEST_COLUMNS = ["image_id", "lat", "lon", "split"]
#: Rows of a features file read at once by the kNN baseline.
FEATURE_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class KnnSettings:
    """The neighbour search of the kNN baseline (``baselines.knn`` in config)."""

    CONFIG_SECTION: ClassVar[str] = "baselines.knn"

    neighbors: int
    exact_max_train: int
    probes: int


def training_set(manifest: pl.DataFrame, excluded: frozenset[str] = frozenset()) -> pl.DataFrame:
    """The train split of a corpus manifest without the ``excluded`` ids (training images that
    are eval images), or an error when nothing is left."""
    train = training_rows(manifest)
    if excluded:
        train = train.filter(~pl.col("image_id").is_in(list(excluded)))
    if train.height == 0:
        raise GeolocsftError(
            "the corpus has no training images (check ingest.test_fraction, the rejection "
            "report and results/leakage/train_excluded.csv): the baselines have nothing to "
            "learn from"
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


def neighbour_medoids(
    lat: npt.NDArray[np.float64], lon: npt.NDArray[np.float64], neighbours: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """For each row of neighbour indices (m, k), the index of their geodesic medoid: the
    neighbour with the smallest summed great-circle distance to the others (the first on a tie).
    Vectorised over all rows."""
    points = to_unit_vectors(lat[neighbours].ravel(), lon[neighbours].ravel()).reshape(
        *neighbours.shape, 3
    )
    cosines = np.clip(np.einsum("mik,mjk->mij", points, points), -1.0, 1.0)
    totals = np.arccos(cosines).sum(axis=2)
    best = np.argmin(totals, axis=1)
    return neighbours[np.arange(neighbours.shape[0]), best]


def _matrix(
    rows: pl.DataFrame, features: pl.DataFrame | pl.LazyFrame, what: str
) -> npt.NDArray[np.float32]:
    """The feature vectors of ``rows`` in their order, gathered batch by batch into one array.

    ``features`` may be a lazy scan of a features file: it is read in batches of
    :data:`FEATURE_BATCH_ROWS` and only the rows asked for are kept (at 1M images, the 384 MB
    of the training vectors, not the 512 MB file joined and copied: 1.3 GB more at the peak)."""
    wanted = rows.select("image_id").with_row_index("row")
    batches: Iterable[pl.DataFrame] = (
        features.iter_slices(FEATURE_BATCH_ROWS)
        if isinstance(features, pl.DataFrame)
        else features.select("image_id", "features").collect_batches(chunk_size=FEATURE_BATCH_ROWS)
    )
    matrix: npt.NDArray[np.float32] | None = None
    found = np.zeros(rows.height, dtype=np.int64)
    for batch in batches:
        hit = batch.select("image_id", "features").join(wanted, on="image_id")
        if hit.height == 0:
            continue
        vectors = hit["features"].to_numpy()
        if matrix is None:
            matrix = np.empty((rows.height, vectors.shape[1]), dtype=np.float32)
        at = hit["row"].to_numpy()
        matrix[at] = vectors
        np.add.at(found, at, 1)
    if (found > 1).any():
        twice = wanted.filter(pl.Series(found > 1))["image_id"].to_list()
        raise GeolocsftError(f"the {what} features hold images {twice[:5]} more than once")
    if not found.all():
        missing = wanted.filter(pl.Series(found == 0))["image_id"].to_list()
        raise GeolocsftError(f"no {what} features for images {missing[:5]}: rerun image_features")
    return matrix if matrix is not None else np.empty((0, 0), dtype=np.float32)


def predict_knn(
    train: pl.DataFrame,
    train_features: pl.DataFrame | pl.LazyFrame,
    targets: pl.DataFrame,
    target_features: pl.DataFrame | pl.LazyFrame,
    settings: KnnSettings,
    seed: int = 0,
) -> pl.DataFrame:
    """Each target gets the geodesic medoid of its ``neighbors`` most similar training images.
    The features may be lazy scans of the features files (only the rows used are read)."""
    if targets.height == 0:
        return prediction_table(targets, [], [], [])
    train_x = _matrix(train, train_features, "training")
    target_x = _matrix(targets, target_features, "target")
    distances, neighbours = nearest_neighbours(
        train_x,
        target_x,
        settings.neighbors,
        exact_max=settings.exact_max_train,
        probes=settings.probes,
        seed=seed,
    )
    train_lat, train_lon = train["lat"].to_numpy(), train["lon"].to_numpy()
    best = neighbour_medoids(train_lat, train_lon, neighbours)
    ids = train["image_id"].to_numpy()
    listed = [
        ", ".join(f"{i} ({d:.3f})" for i, d in zip(row_ids, row_d, strict=True))
        for row_ids, row_d in zip(ids[neighbours], distances.tolist(), strict=True)
    ]
    raw = [f"nearest training images by colour/thumbnail features: {text}" for text in listed]
    return prediction_table(targets, train_lat[best], train_lon[best], raw)
