"""Benchmark of the kNN baseline: per-image feature memo, and the neighbour search at scale.

    .venv/bin/python benchmarks/knn.py [--images N] [--train T ...] [--exact-up-to E]
        [--probes P] [--workdir DIR]

1. **Features, add 100.** ``N`` (2,000) synthetic 320x240 JPEGs (fixed seed): their features
   computed into an empty memo (``geolocsft.features.compute_features``), then the same images
   plus 100 new ones with the memo kept (only the 100 are computed), then a no-op rerun, each
   also writing the features Parquet file as the workflow job does.
2. **Search.** For each training size ``T`` (default 100,000 and 1,000,000) and ``T / 4``
   queries (the default test fraction), synthetic 128-dimensional features (the width of the
   default colour histogram + thumbnail) drawn around 2,000 random centres with a decaying
   spectrum, the 3 nearest neighbours found by: the exact search the baseline used before
   (scikit-learn ``NearestNeighbors``, brute force; only up to ``E`` = 200,000 training
   vectors, beyond that its O(T x Q) time is extrapolated from the largest measured size) and
   the inverted-file index (``geolocsft.vector_index``: build + search, ``P`` = 16 probes), with
   the index's recall@3 against the exact search where both ran. Then the whole
   ``predict_knn`` (search, neighbour medoids, answer text) at each size.

Prints one table per part (wall seconds) and whether the targets are met: adding 100 images
computes 100 vectors; 1M training x 250k queries in minutes (< 10 min here).
"""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from geolocsft import features as features_module  # noqa: E402
from geolocsft.baselines import KnnSettings, predict_knn  # noqa: E402
from geolocsft.features import FeatureSettings, compute_features  # noqa: E402
from geolocsft.settings import configured  # noqa: E402
from geolocsft.vector_index import IvfIndex, nearest_neighbours  # noqa: E402

WIDTH = 128
TARGET_1M_S = 600.0


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import os

    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPUs ({cpu}), 1-min load {load:.1f}; numpy {np.__version__}"


def write_images(folder: Path, start: int, count: int) -> pl.DataFrame:
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((320, 240), Image.Resampling.BILINEAR)
        path = folder / f"img{i:07d}.jpg"
        image.save(path, quality=85)
        rows.append((path.stem, str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
    return pl.DataFrame(rows, schema=["image_id", "path", "sha256"], orient="row")


def features_part(images: int, work: Path) -> None:
    settings = configured(FeatureSettings)
    first = write_images(work / "images", 0, images)
    added = pl.concat([first, write_images(work / "images", images, 100)])
    computed: list[int] = []
    real = features_module.image_features

    def counting(path: Path, s: FeatureSettings) -> np.ndarray:
        computed.append(1)
        return real(path, s)

    features_module.image_features = counting  # type: ignore[assignment]
    rows = []
    for label, manifest in (
        (f"{images:,} images, empty memo", first),
        (f"{images + 100:,} images (100 added), memo kept", added),
        (f"{images + 100:,} images, no-op rerun", added),
    ):
        computed.clear()
        started = time.perf_counter()
        compute_features(manifest, settings, work / "memo").write_parquet(work / "f.parquet")
        rows.append((label, time.perf_counter() - started, len(computed)))
    features_module.image_features = real  # type: ignore[assignment]
    print("\n| features run | wall (s) | vectors computed |\n|---|---:|---:|")
    for label, seconds, count in rows:
        print(f"| {label} | {seconds:.2f} | {count:,} |")
    ok = rows[1][2] == 100 and rows[2][2] == 0
    print(f"\nadding 100 images computes {rows[1][2]} vectors: {'meets' if ok else 'MISSES'}")


def synthetic(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    scales = (1.0 / np.sqrt(np.arange(1, WIDTH + 1))).astype(np.float32)
    which = rng.integers(0, len(centres), n)
    noise = rng.normal(size=(n, WIDTH)).astype(np.float32)
    return centres[which] + 0.35 * noise * scales


def search_part(sizes: list[int], exact_up_to: int, probes: int) -> None:
    rng = np.random.default_rng(0)
    scales = (1.0 / np.sqrt(np.arange(1, WIDTH + 1))).astype(np.float32)
    centres = rng.normal(size=(2000, WIDTH)).astype(np.float32) * scales
    rows = []
    exact_rate = None  # seconds per (train x query) pair of the brute force
    for train_n in sizes:
        query_n = train_n // 4
        train = synthetic(train_n, rng, centres)
        queries = synthetic(query_n, rng, centres)
        exact_s: float | None = None
        recall = None
        if train_n <= exact_up_to:
            started = time.perf_counter()
            _, exact_i = nearest_neighbours(train, queries, 3, exact_max=train_n, probes=probes)
            exact_s = time.perf_counter() - started
            exact_rate = exact_s / (train_n * query_n)
        started = time.perf_counter()
        index = IvfIndex.build(train, seed=0)
        build_s = time.perf_counter() - started
        _, ivf_i = index.search(queries, 3, probes)
        search_s = time.perf_counter() - started - build_s
        if exact_s is not None:
            recall = float(
                np.mean([len(set(a) & set(b)) / 3 for a, b in zip(ivf_i, exact_i, strict=True)])
            )
        lat = rng.uniform(-80, 80, train_n)
        lon = rng.uniform(-180, 180, train_n)
        table = pl.DataFrame(
            {"image_id": [f"t{i}" for i in range(train_n)], "lat": lat, "lon": lon}
        )
        feats = pl.DataFrame(
            {
                "image_id": table["image_id"],
                "features": pl.Series(train, dtype=pl.Array(pl.Float32, WIDTH)),
            }
        )
        targets = pl.DataFrame(
            {
                "image_id": [f"q{i}" for i in range(query_n)],
                "lat": rng.uniform(-80, 80, query_n),
                "lon": rng.uniform(-180, 180, query_n),
            }
        )
        target_feats = pl.DataFrame(
            {
                "image_id": targets["image_id"],
                "features": pl.Series(queries, dtype=pl.Array(pl.Float32, WIDTH)),
            }
        )
        settings = configured(KnnSettings, exact_max_train=50_000, probes=probes)
        started = time.perf_counter()
        predict_knn(table, feats, targets, target_feats, settings)
        whole_s = time.perf_counter() - started
        estimated = exact_s is None and exact_rate is not None
        exact_value = (
            exact_s
            if exact_s is not None
            else (exact_rate * train_n * query_n if exact_rate is not None else None)
        )
        rows.append(
            (
                train_n,
                query_n,
                exact_value,
                estimated,
                build_s,
                search_s,
                recall,
                whole_s,
                index.cells,
            )
        )
        del train, queries, feats, target_feats
    print(
        "\n| training x queries | exact brute force (s) | IVF build (s) "
        f"| IVF search, {probes} probes (s) | cells | recall@3 vs exact "
        "| predict_knn, whole (s) |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    for train_n, query_n, exact_value, estimated, build_s, search_s, recall, whole_s, cells in rows:
        exact_text = (
            "–"
            if exact_value is None
            else f"{exact_value:.1f}{' (extrapolated)' if estimated else ''}"
        )
        recall_text = "–" if recall is None else f"{recall:.3f}"
        print(
            f"| {train_n:,} x {query_n:,} | {exact_text} | {build_s:.1f} | {search_s:.1f} "
            f"| {cells} | {recall_text} | {whole_s:.1f} |"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this process (all sizes, features included): {peak:,.0f} MB")
    largest = rows[-1]
    verdict = "meets" if largest[7] <= TARGET_1M_S else "MISSES"
    print(
        f"\npredict_knn at {largest[0]:,} x {largest[1]:,}: {largest[7]:.0f} s, "
        f"{verdict} < {TARGET_1M_S:.0f} s"
    )


JOB = """
import sys, time, resource
from pathlib import Path
import polars as pl
from geolocsft.baselines import KnnSettings, predict_knn, training_set
from geolocsft.settings import configured
from geolocsft.splits import evaluation_targets
work = Path(sys.argv[1])
started = time.perf_counter()
corpus = pl.read_parquet(work / "manifest.parquet")
train = training_set(corpus, frozenset())
targets = evaluation_targets(corpus)
features = pl.read_parquet(work / "features.parquet")
settings = configured(KnnSettings, probes=int(sys.argv[2]))
predict_knn(train, features, targets, features, settings).write_csv(work / "knn.csv")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{time.perf_counter() - started:.1f} {peak:.0f}")
"""


def job_part(train_n: int, probes: int, work: Path) -> None:
    """The predict_knn job as the workflow runs it (read Parquet, split, search, write CSV), in
    a fresh process: wall time and peak RSS (issue #13: under 2 GB at 1M)."""
    import subprocess

    rng = np.random.default_rng(1)
    scales = (1.0 / np.sqrt(np.arange(1, WIDTH + 1))).astype(np.float32)
    centres = rng.normal(size=(2000, WIDTH)).astype(np.float32) * scales
    total = train_n + train_n // 4
    ids = [f"img{i:08d}" for i in range(total)]
    pl.DataFrame(
        {
            "image_id": ids,
            "lat": rng.uniform(-80, 80, total),
            "lon": rng.uniform(-180, 180, total),
            "split": ["train"] * train_n + ["test"] * (total - train_n),
        }
    ).write_parquet(work / "manifest.parquet")
    vectors = synthetic(total, rng, centres)
    pl.DataFrame(
        {"image_id": ids, "features": pl.Series(vectors, dtype=pl.Array(pl.Float32, WIDTH))}
    ).write_parquet(work / "features.parquet")
    del vectors
    done = subprocess.run(
        [sys.executable, "-c", JOB, str(work), str(probes)],
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    wall, peak = done.stdout.split()
    print(
        f"\npredict_knn job, {train_n:,} training x {total - train_n:,} eval images (fresh "
        f"process, Parquet in, CSV out): {wall} s, peak RSS {int(peak):,} MB "
        f"({'meets' if int(peak) < 2048 else 'MISSES'} < 2 GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--train", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--exact-up-to", type=int, default=200_000)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument(
        "--job", type=int, default=0, metavar="T", help="also run the predict_knn job at T"
    )
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(machine())
    with tempfile.TemporaryDirectory() as temp:
        work = args.workdir or Path(temp)
        if not args.skip_features:
            features_part(args.images, work)
        if not args.skip_search:
            search_part(args.train, args.exact_up_to, args.probes)
        if args.job:
            job_part(args.job, args.probes, work)


if __name__ == "__main__":
    main()
