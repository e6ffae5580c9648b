"""Benchmark of the evaluate stage on synthetic predictions (default: 1,000,000 rows).

    .venv/bin/python benchmarks/evaluate.py [--rows N] [--repeats K] [--workdir DIR]
        [--before SRC]

Makes a prediction CSV with a fixed seed (true points uniform on the sphere; ~2% unanswered
rows written as empty, ``nan`` or ``unknown``; errors log-uniform from 10 m to 20,000 km in a
random direction; a ``country_code`` column of 200 codes) and the eval set's manifest (Parquet:
``image_id, lat, lon, split, country_code``), then times, ``repeats`` times each:

* ``metrics (in memory)``: distances + Acc@R + intervals from float arrays;
* ``per-country table (in memory)``;
* ``evaluate_file, no plots`` / ``with plots``: read the CSV, score, write every table (and the
  two PNGs), truth from the file;
* ``evaluate_file, manifest join, with plots``: the same joined on the manifest by image id, as
  the workflow runs it;
* ``geolocsft evaluate`` as a user runs it (a new Python process: start-up and imports
  included), with and without ``--manifest``, with plots; with ``--before SRC`` (the ``src/``
  folder of an older checkout) also that code's ``geolocsft evaluate`` on the same file, for a
  before/after in one run.

and prints median and minimum seconds per stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from geolocsft.evaluate import (
    EvaluationSettings,
    PredictionArrays,
    compute_distances,
    compute_metrics,
    evaluate_file,
    per_country_table,
)
from geolocsft.geo import MEAN_EARTH_RADIUS_KM
from geolocsft.settings import configured

GOAL_S = 2.0
REPO = Path(__file__).resolve().parents[1]


def synthetic_predictions(rows: int, seed: int = 0) -> pl.DataFrame:
    """A prediction table as text, the way a predictor writes it."""
    rng = np.random.default_rng(seed)
    true_lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, rows)))
    true_lon = rng.uniform(-180.0, 180.0, rows)
    # Destination at a log-uniform distance and a random bearing, on the sphere.
    angle = 10.0 ** rng.uniform(-2.0, np.log10(20_000.0), rows) / MEAN_EARTH_RADIUS_KM
    bearing = rng.uniform(0.0, 2.0 * np.pi, rows)
    phi1, lam1 = np.radians(true_lat), np.radians(true_lon)
    phi2 = np.arcsin(np.sin(phi1) * np.cos(angle) + np.cos(phi1) * np.sin(angle) * np.cos(bearing))
    lam2 = lam1 + np.arctan2(
        np.sin(bearing) * np.sin(angle) * np.cos(phi1),
        np.cos(angle) - np.sin(phi1) * np.sin(phi2),
    )
    pred_lat = np.degrees(phi2)
    pred_lon = (np.degrees(lam2) + 180.0) % 360.0 - 180.0
    unanswered = rng.random(rows) < 0.02
    junk = np.array(["", "nan", "unknown"])[rng.integers(0, 3, rows)]
    codes = np.array([f"{a}{b}" for a in "ABCDEFGHIJ" for b in "ABCDEFGHIJKLMNOPQRST"])
    return pl.DataFrame(
        {
            "image_id": [f"img{i:07d}" for i in range(rows)],
            "pred_lat": np.where(unanswered, junk, pred_lat.round(6).astype(str)),
            "pred_lon": np.where(unanswered, junk, pred_lon.round(6).astype(str)),
            "true_lat": true_lat.round(6).astype(str),
            "true_lon": true_lon.round(6).astype(str),
            "country_code": codes[rng.integers(0, codes.size, rows)],
        }
    )


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (user + system)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def time_stage(function: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each repeat. On a shared machine the wall time grows with the
    load; the CPU time much less (it still includes the threads' waiting in spin locks)."""
    walls, cpus = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), _cpu_s()
        function()
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu_s() - cpu)
    return walls, cpus


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}), 1-min load {os.getloadavg()[0]:.1f}; Python "
        f"{platform.python_version()}, numpy {np.__version__}, polars {pl.__version__}"
    )


def cli(src: Path, *args: str | Path) -> Callable[[], object]:
    """``geolocsft evaluate`` of the package in ``src``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "geolocsft.cli", "-q", "evaluate", *map(str, args)]

    def run() -> None:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temp dir)")
    parser.add_argument("--before", type=Path, help="src/ folder of an older checkout to compare")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory() as temp:
        work = args.workdir or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        pred = work / "predictions.csv"
        manifest = work / "manifest.parquet"
        started = time.perf_counter()
        table = synthetic_predictions(args.rows)
        table.write_csv(pred)
        table.select(
            "image_id",
            pl.col("true_lat").cast(pl.Float64).alias("lat"),
            pl.col("true_lon").cast(pl.Float64).alias("lon"),
            pl.lit("test").alias("split"),
            "country_code",
        ).write_parquet(manifest)
        print(
            f"{args.rows:,} synthetic predictions -> {pred} "
            f"({pred.stat().st_size / 1e6:.0f} MB, made in {time.perf_counter() - started:.1f} s)"
        )
        print(machine())

        settings = configured(EvaluationSettings)
        floats = table.select(
            pl.col("pred_lat", "pred_lon", "true_lat", "true_lon").cast(pl.Float64, strict=False)
        )
        pred_lat, pred_lon = (floats[c].to_numpy() for c in ("pred_lat", "pred_lon"))
        answered = np.isfinite(pred_lat) & np.isfinite(pred_lon)
        arrays = PredictionArrays(
            pred_lat=pred_lat,
            pred_lon=pred_lon,
            true_lat=floats["true_lat"].to_numpy(),
            true_lon=floats["true_lon"].to_numpy(),
            answered=answered,
            lon_wrapped=0,
        )
        distances = compute_distances(arrays, settings)
        countries = table["country_code"]

        stages: dict[str, Callable[[], object]] = {
            "metrics (in memory)": lambda: compute_metrics(
                compute_distances(arrays, settings), settings
            ),
            "per-country table (in memory)": lambda: per_country_table(
                distances, countries, settings
            ),
            "evaluate_file, no plots": lambda: evaluate_file(
                pred, work / "eval", settings=settings, make_plots=False
            ),
            "evaluate_file, with plots": lambda: evaluate_file(
                pred, work / "eval_plots", settings=settings, make_plots=True
            ),
            "evaluate_file, manifest join, with plots": lambda: evaluate_file(
                pred, work / "eval_join", manifest_path=manifest, settings=settings
            ),
            "`geolocsft evaluate`, no plots": cli(
                REPO / "src", pred, "--out", work / "cli", "--no-plots"
            ),
            "`geolocsft evaluate`, with plots": cli(REPO / "src", pred, "--out", work / "cli"),
            "`geolocsft evaluate --manifest`, with plots": cli(
                REPO / "src", pred, "--manifest", manifest, "--out", work / "cli_join"
            ),
        }
        if args.before is not None:
            stages["before: `geolocsft evaluate`, no plots"] = cli(
                args.before, pred, "--out", work / "before", "--no-plots"
            )
            stages["before: `geolocsft evaluate`, with plots"] = cli(
                args.before, pred, "--out", work / "before"
            )
        results = {name: time_stage(stage, args.repeats) for name, stage in stages.items()}

    metrics = compute_metrics(distances, settings)
    print(
        f"answered {metrics.answered:,} of {metrics.n:,}; "
        + ", ".join(f"{k} {v:.2f}%" for k, v in metrics.accuracy.items() if v is not None)
    )
    print()
    print(
        f"| stage ({args.rows:,} rows, {args.repeats} repeats) | wall median (s) | wall min (s) "
        "| CPU median (s) |"
    )
    print("|---|---:|---:|---:|")
    for name, (walls, cpus) in results.items():
        print(
            f"| {name} | {statistics.median(walls):.3f} | {min(walls):.3f} "
            f"| {statistics.median(cpus):.3f} |"
        )
    print(f"1-min load average after the runs: {os.getloadavg()[0]:.1f}")
    whole = statistics.median(results["`geolocsft evaluate --manifest`, with plots"][0])
    verdict = "meets" if whole <= GOAL_S else "MISSES"
    print(
        f"\n`geolocsft evaluate --manifest` with plots, wall clock: {whole:.2f} s median, "
        f"{verdict} the {GOAL_S:g} s goal"
    )


if __name__ == "__main__":
    main()
