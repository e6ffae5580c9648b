"""No eval image in the training data: identical bytes across splits or benchmarks, and
near-duplicates by perceptual hash, are excluded and reported."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import DEMO_IMAGES, write_photo
from PIL import Image

from geolocsft.leakage import (
    LeakageSettings,
    dhash,
    excluded_ids,
    find_leaks,
    near_duplicate_pairs,
    perceptual_hashes,
    summary,
    write_report,
)
from geolocsft.settings import configured


def manifest(rows: list[tuple[str, Path, str]]) -> pl.DataFrame:
    """A manifest of (image_id, path, split) rows with the real sha256 of each file."""
    return pl.DataFrame(
        {
            "image_id": [r[0] for r in rows],
            "path": [str(r[1]) for r in rows],
            "sha256": [hashlib.sha256(r[1].read_bytes()).hexdigest() for r in rows],
            "split": [r[2] for r in rows],
        }
    )


def demo(name: str) -> Path:
    return DEMO_IMAGES / name


@pytest.fixture
def photos() -> list[Path]:
    return sorted(p for p in DEMO_IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))


def test_same_bytes_under_two_ids_across_the_split_is_excluded(tmp_path, photos) -> None:
    copy = tmp_path / "renamed.jpg"
    shutil.copyfile(photos[0], copy)
    corpus = manifest(
        [
            ("original", photos[0], "test"),
            ("renamed", copy, "train"),  # the same photo, another id, the other side
            ("other", photos[1], "train"),
        ]
    )
    report = find_leaks(corpus, {}, configured(LeakageSettings, near_duplicates=False))
    assert report.select("image_id", "kind", "eval_set", "eval_image_id").rows() == [
        ("renamed", "identical", "holdout", "original")
    ]


def test_a_benchmark_photo_also_in_the_corpus_is_excluded(tmp_path, photos) -> None:
    corpus = manifest([("c1", photos[0], "train"), ("c2", photos[1], "train")])
    benchmark = manifest([("b7", photos[1], "test"), ("b8", photos[2], "test")])
    report = find_leaks(corpus, {"im2gps3k": benchmark}, configured(LeakageSettings))
    assert report.select("image_id", "kind", "eval_set", "eval_image_id").rows() == [
        ("c2", "identical", "im2gps3k", "b7")
    ]


def test_a_resized_reencoded_copy_is_a_near_duplicate(tmp_path, photos) -> None:
    with Image.open(photos[3]) as source:
        small = source.convert("RGB").resize((source.width // 3, source.height // 3))
        small.save(tmp_path / "small.jpg", quality=70)
    corpus = manifest([("small", tmp_path / "small.jpg", "train"), ("kept", photos[4], "train")])
    benchmark = manifest([("original", photos[3], "test")])
    on = find_leaks(corpus, {"bench": benchmark}, configured(LeakageSettings), tmp_path / "memo")
    (row,) = on.rows(named=True)
    assert (row["image_id"], row["kind"], row["eval_image_id"]) == (
        "small",
        "near_duplicate",
        "original",
    )
    assert row["hamming"] <= 4
    off = find_leaks(
        corpus, {"bench": benchmark}, configured(LeakageSettings, near_duplicates=False)
    )
    assert off.height == 0
    # The hashes were computed from the images once and are reused from the memo.
    assert any((tmp_path / "memo" / "dhash").rglob("part-*.parquet"))


def test_distinct_photos_are_not_near_duplicates(photos) -> None:
    half = len(photos) // 2
    corpus = manifest([(f"t{i}", p, "train") for i, p in enumerate(photos[:half])])
    benchmark = manifest([(f"b{i}", p, "test") for i, p in enumerate(photos[half:])])
    assert find_leaks(corpus, {"b": benchmark}, configured(LeakageSettings)).height == 0


def test_the_manifest_phash_column_is_used_when_present(tmp_path) -> None:
    a, b = write_photo(tmp_path / "a.png", seed=1), write_photo(tmp_path / "b.png", seed=2)
    corpus = manifest([("a", a, "train")]).with_columns(pl.lit("00ff00ff00ff00ff").alias("phash"))
    bench = manifest([("b", b, "test")]).with_columns(pl.lit("00ff00ff00ff00fe").alias("phash"))
    report = find_leaks(corpus, {"x": bench}, configured(LeakageSettings))
    assert report.select("image_id", "hamming").rows() == [("a", 1)]
    assert perceptual_hashes(corpus, None).to_list() == ["00ff00ff00ff00ff"]


def test_dhash_matches_its_definition(tmp_path) -> None:
    # Brighter to the right everywhere: every bit set; brighter to the left on the top half
    # only: the first 32 bits (rows 0-3, most significant first) clear.
    ramp = np.tile(np.linspace(0, 255, 90), (80, 1)).astype(np.uint8)
    Image.fromarray(ramp).convert("RGB").save(tmp_path / "ramp.png")
    assert dhash(tmp_path / "ramp.png") == "f" * 16
    ramp[:40] = ramp[:40, ::-1]
    Image.fromarray(ramp).convert("RGB").save(tmp_path / "half.png")
    assert dhash(tmp_path / "half.png") == "0" * 8 + "f" * 8
    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(flat)
    assert dhash(flat) == "0" * 16


def test_band_search_finds_every_pair_within_the_threshold() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(1, 2**63, size=400, dtype=np.int64).astype(np.uint64)
    evals = train[:50].copy()
    flips = rng.integers(0, 64, size=(50, 4))
    for i, row in enumerate(flips):
        for bit in row[: i % 5]:
            evals[i] ^= np.uint64(1) << np.uint64(bit)
    t, e, d = near_duplicate_pairs(train, evals, 4)
    brute = np.bitwise_count(train[:, None] ^ evals[None, :])
    expected = sorted(zip(*np.nonzero(brute <= 4), strict=True))
    assert sorted(zip(t.tolist(), e.tolist(), strict=True)) == [
        (int(a), int(b)) for a, b in expected
    ]
    assert d.max() <= 4


def test_report_summary_and_excluded_ids(tmp_path, photos) -> None:
    corpus = manifest(
        [("x", photos[0], "test"), ("y", photos[0], "train"), ("z", photos[1], "train")]
    )
    settings = configured(LeakageSettings, near_duplicates=False)
    report = find_leaks(corpus, {}, settings)
    info = summary(report, corpus, settings)
    write_report(report, info, tmp_path / "r.csv", tmp_path / "s.json")
    assert excluded_ids(tmp_path / "r.csv") == frozenset({"y"})
    written = json.loads((tmp_path / "s.json").read_text())
    assert written["excluded_training_images"] == 1 and written["training_images"] == 2
    assert written["pairs"] == {"identical": 1, "near_duplicate": 0}


def test_low_detail_hashes_are_never_near_duplicates_and_memory_stays_bounded() -> None:
    """Sparse hashes (blank skies: a few bits set) lie within 4 bits of each other whatever the
    photo: they are left out, and the band search checks candidates in bounded slices."""
    rng = np.random.default_rng(1)
    sparse = np.zeros(3000, dtype=np.uint64)
    for i in range(sparse.size):
        for bit in rng.integers(0, 64, size=2):
            sparse[i] |= np.uint64(1) << np.uint64(bit)
    detailed = rng.integers(1, 2**63, size=200, dtype=np.int64).astype(np.uint64)
    train = np.concatenate([sparse, detailed])
    evals = np.concatenate([sparse[:1000] ^ np.uint64(1), detailed[:20]])
    t, e, d = near_duplicate_pairs(train, evals, 4, min_bits=8, limit=1000)
    assert set(zip(t.tolist(), e.tolist(), strict=True)) == {
        (3000 + i, 1000 + i) for i in range(20)
    }
    assert (d == 0).all()
    # Without the floor every sparse pair within 4 bits is found, slice by slice, as by brute force.
    t, e, _ = near_duplicate_pairs(train[:300], evals[:100], 4, min_bits=0, limit=1000)
    brute = np.bitwise_count(train[:300, None] ^ evals[None, :100])
    keep = (train[:300, None] != 0) & (evals[None, :100] != 0)
    assert sorted(zip(t.tolist(), e.tolist(), strict=True)) == sorted(
        (int(a), int(b)) for a, b in zip(*np.nonzero((brute <= 4) & keep), strict=True)
    )
