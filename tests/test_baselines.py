"""Baselines: per-item memoized features (parts and gather), the kNN index, the exclusions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import write_photo

from geolocsft import features as features_module
from geolocsft.baselines import (
    KnnSettings,
    neighbour_medoids,
    predict_knn,
    predict_medoid,
    training_set,
)
from geolocsft.errors import GeolocsftError
from geolocsft.features import (
    FeatureSettings,
    compute_features,
    gather_features,
    part_rows,
)
from geolocsft.geo import geodesic_medoid_index
from geolocsft.settings import configured
from geolocsft.vector_index import IvfIndex, nearest_neighbours


def photo_manifest(folder: Path, count: int, start: int = 0) -> pl.DataFrame:
    paths = [write_photo(folder / f"p{i:03d}.jpg", seed=i) for i in range(start, start + count)]
    return pl.DataFrame(
        {
            "image_id": [p.stem for p in paths],
            "path": [str(p) for p in paths],
            "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
        }
    )


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every image whose features are really computed (the real function, counted)."""
    calls: list[str] = []
    real = features_module.image_features

    def spy(path: Path, settings: FeatureSettings) -> np.ndarray:
        calls.append(path.name)
        return real(path, settings)

    monkeypatch.setattr(features_module, "image_features", spy)
    return calls


def test_adding_images_computes_only_their_features(tmp_path, counted) -> None:
    settings = configured(FeatureSettings)
    memo = tmp_path / "memo"
    first = photo_manifest(tmp_path / "img", 10)
    compute_features(first, settings, memo).write_parquet(tmp_path / "a.parquet")
    assert len(counted) == 10
    counted.clear()
    grown = pl.concat([first, photo_manifest(tmp_path / "img", 3, start=10)])
    reused = compute_features(grown, settings, memo)
    assert sorted(counted) == ["p010.jpg", "p011.jpg", "p012.jpg"]
    reused.write_parquet(tmp_path / "reused.parquet")
    # A reused vector is the same bytes as a rebuilt one: the whole file matches a fresh run.
    compute_features(grown, settings, None).write_parquet(tmp_path / "fresh.parquet")
    assert (tmp_path / "reused.parquet").read_bytes() == (tmp_path / "fresh.parquet").read_bytes()
    # Other settings are another memo version: recomputed, never mixed.
    counted.clear()
    compute_features(first, configured(FeatureSettings, thumbnail_px=4), memo)
    assert len(counted) == 10


def test_parts_cover_every_image_once_and_gather_like_one_job(tmp_path) -> None:
    settings = configured(FeatureSettings)
    manifest = photo_manifest(tmp_path / "img", 12)
    whole = compute_features(manifest, settings, tmp_path / "memo")
    parts = [
        compute_features(part_rows(manifest, p, 3), settings, tmp_path / "memo") for p in range(3)
    ]
    assert sorted(pl.concat(parts)["image_id"]) == sorted(manifest["image_id"])
    gathered = gather_features(manifest, parts)
    gathered.write_parquet(tmp_path / "g.parquet")
    whole.write_parquet(tmp_path / "w.parquet")
    assert (tmp_path / "g.parquet").read_bytes() == (tmp_path / "w.parquet").read_bytes()
    with pytest.raises(GeolocsftError, match="no features in any part"):
        gather_features(manifest, parts[:2])
    with pytest.raises(GeolocsftError, match="more than one part"):
        gather_features(manifest, [*parts, parts[0]])


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, 32)).astype(np.float32)
    return centres[rng.integers(0, 50, n)] + 0.3 * rng.normal(size=(n, 32)).astype(np.float32)


def test_inverted_file_index_is_exact_when_every_cell_is_probed() -> None:
    train, queries = clustered(3000, 0), clustered(300, 1)
    exact_d, exact_i = nearest_neighbours(train, queries, 3, exact_max=10**9, probes=1)
    index = IvfIndex.build(train, seed=0)
    d, i = index.search(queries, 3, probes=index.cells)
    assert np.array_equal(i, exact_i)
    assert d == pytest.approx(exact_d, abs=1e-3)
    # A few probes find nearly all true neighbours on clustered data.
    _, few = index.search(queries, 3, probes=4)
    recall = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(few, exact_i, strict=True)])
    assert recall > 0.9


def test_the_index_is_used_above_exact_max() -> None:
    train, queries = clustered(2000, 2), clustered(100, 3)
    _, exact = nearest_neighbours(train, queries, 5, exact_max=10**9, probes=1)
    _, indexed = nearest_neighbours(train, queries, 5, exact_max=100, probes=10**6)
    assert np.array_equal(exact, indexed)


def test_vectorised_neighbour_medoid_matches_the_geodesic_medoid() -> None:
    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(-80, 80, 300), rng.uniform(-180, 180, 300)
    neighbours = rng.integers(0, 300, size=(200, 5))
    expected = [row[geodesic_medoid_index(lat[row], lon[row])] for row in neighbours]
    assert neighbour_medoids(lat, lon, neighbours).tolist() == [int(e) for e in expected]


def test_training_set_leaves_out_excluded_images() -> None:
    manifest = pl.DataFrame(
        {"image_id": ["a", "b", "c"], "split": ["train", "train", "test"], "lat": [1.0] * 3}
    )
    assert training_set(manifest, frozenset({"b"}))["image_id"].to_list() == ["a"]
    with pytest.raises(GeolocsftError, match="leakage"):
        training_set(manifest, frozenset({"a", "b"}))


def random_training_places(n: int, seed: int) -> pl.DataFrame:
    """``n`` training images ``t0..`` at seeded random places."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "image_id": [f"t{i}" for i in range(n)],
            "lat": rng.uniform(-60, 60, n),
            "lon": rng.uniform(-170, 170, n),
        }
    )


def test_knn_and_medoid_predict_training_locations(tmp_path) -> None:
    n = 60
    train = random_training_places(n, seed=1)
    x = clustered(n, 7)
    feats = pl.DataFrame(
        {"image_id": train["image_id"], "features": pl.Series(x, dtype=pl.Array(pl.Float32, 32))}
    )
    targets = train.head(5).with_columns(pl.format("q{}", pl.col("image_id")).alias("image_id"))
    target_feats = feats.head(5).with_columns(
        pl.format("q{}", pl.col("image_id")).alias("image_id")
    )
    settings = configured(KnnSettings, neighbors=1)
    result = predict_knn(train, feats, targets, target_feats, settings)
    # Each query's own vector is in the training set: its nearest neighbour is itself.
    assert result["pred_lat"].to_list() == train["lat"].head(5).to_list()
    assert result["raw_answer"][0].startswith("nearest training images by colour/thumbnail")
    medoid = predict_medoid(train, targets)
    assert medoid["pred_lat"].n_unique() == 1 and medoid["pred_lat"][0] in set(train["lat"])


def test_knn_reads_features_files_in_batches_and_names_missing_ones(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workflow passes lazy scans of the features files: read in batches (here of 7 rows,
    in another order than the training rows), they give the predictions of the in-memory
    tables; an image without features, or with two rows of them, is named."""
    import geolocsft.baselines as baselines_module

    monkeypatch.setattr(baselines_module, "FEATURE_BATCH_ROWS", 7)
    n = 40
    train = random_training_places(n, seed=3)
    feats = pl.DataFrame(
        {
            "image_id": train["image_id"],
            "features": pl.Series(clustered(n, 5), dtype=pl.Array(pl.Float32, 32)),
        }
    )
    targets = train.slice(3, 6)
    settings = configured(KnnSettings, neighbors=3)
    in_memory = predict_knn(train, feats, targets, feats, settings)
    path = tmp_path / "features.parquet"
    feats.sample(fraction=1.0, shuffle=True, seed=2).write_parquet(path, row_group_size=5)
    scanned = predict_knn(train, pl.scan_parquet(path), targets, pl.scan_parquet(path), settings)
    assert scanned.equals(in_memory)
    # Each query is a training image: its own vector is its nearest neighbour.
    assert all(
        answer.split(": ", 1)[1].startswith(f"{image_id} (0.000)")
        for image_id, answer in zip(scanned["image_id"], scanned["raw_answer"], strict=True)
    )

    feats.filter(pl.col("image_id") != "t17").write_parquet(path)
    with pytest.raises(GeolocsftError, match=r"no training features for images \['t17'\]"):
        predict_knn(train, pl.scan_parquet(path), targets, feats, settings)
    pl.concat([feats, feats.filter(pl.col("image_id") == "t5")]).write_parquet(path)
    with pytest.raises(GeolocsftError, match=r"training features hold images \['t5'\] more"):
        predict_knn(train, pl.scan_parquet(path), targets, feats, settings)
