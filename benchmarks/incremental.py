"""End-to-end incremental benchmark: a full run on N images, then add K images and rerun.

    .venv/bin/python benchmarks/incremental.py --sizes 1000 10000 100000 [--add 100]

For each corpus size N, in a fresh copy of the workflow under ``--workdir``:

1. N synthetic 320x240 JPEGs (fixed seed, a metadata table of id, lat, lon) are the corpus;
   offline ``metadata`` captions, the medoid and kNN baselines, one SFT dataset (coordinates
   target), no training run: the per-image stages and nothing that needs a model.
2. ``full``: the first ``snakemake`` run (wall time).
3. ``noop -n``: a dry run right after (nothing to do), wall time of the command.
4. ``add K``: K new images and rows, then the rerun (wall time), with each job's run time and
   peak memory from the rules' ``benchmark:`` files.
5. Floors measured on the same images, on every core: sha256 + full decode of every image,
   writing N small JSON files, re-encoding N images as the dataset does. The ratio uses the
   floors in worker processes (how the stages run); the thread-pool figures are printed too.

It prints one table per size and the targets of issue #13: the add-K rerun within 10% of the
full run and 60 s, the full run within 2x the sum of the floors, the no-op dry run within 10 s
of the workflow's own time (the command's wall time minus ``snakemake --version``'s).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from geolocsft.parallel import map_in_processes

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "src", "config", "envs", "report", "profiles")
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def make_images(
    folder: Path, start: int, count: int, seed: int = 0, size: tuple[int, int] = (320, 240)
) -> list[dict[str, object]]:
    """``count`` distinct JPEGs of ``size`` (width, height) named img<i>.jpg and their rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []

    def one(i: int) -> dict[str, object]:
        rng = np.random.default_rng(seed + i)
        base = rng.integers(0, 255, (3,), dtype=np.uint8)
        noise = rng.integers(0, 40, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray((base + noise).astype(np.uint8)).save(folder / f"img{i}.jpg", quality=85)
        lat = float(np.degrees(np.arcsin(rng.uniform(-1, 1))))
        return {
            "image_id": f"img{i}",
            "lat": round(lat, 6),
            "lon": round(rng.uniform(-180, 180), 6),
        }

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rows = list(pool.map(one, range(start, start + count)))
    return rows


def write_table(path: Path, rows: list[dict[str, object]], append: bool) -> None:
    with path.open("a" if append else "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_id", "lat", "lon"])
        if not append:
            writer.writeheader()
        writer.writerows(rows)


def workflow_copy(dest: Path, images: Path, table: Path) -> Path:
    dest.mkdir(parents=True)
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / part)
    config = yaml.safe_load((dest / "config" / "config.yaml").read_text())
    config["corpus"] = {"name": "bench", "images": str(images), "metadata": str(table)}
    config["captions"]["max_new_requests"] = None
    config["sft"]["runs"] = {}
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


def snakemake(workdir: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    started = time.perf_counter()
    result = subprocess.run(
        [str(SNAKEMAKE), "--cores", str(os.cpu_count() or 1), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"snakemake {args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return wall


def job_times(workdir: Path, since: float = 0.0) -> dict[str, tuple[float, float, float]]:
    """Rule log name -> (seconds, peak RSS MB, peak PSS MB) from the rules' benchmark: files
    written after ``since`` (a time.time(); the files of jobs that did not run again are older).

    Snakemake sums the RSS of a job's processes, so a job with forked worker processes counts
    the pages they share with it once per process; PSS divides shared pages among them."""
    found = {}
    for tsv in sorted((workdir / "results" / "runtime").rglob("*.tsv")):
        if tsv.stat().st_mtime < since:
            continue
        with tsv.open() as handle:
            row = next(csv.DictReader(handle, delimiter="\t"))
        found[str(tsv.relative_to(workdir / "results" / "runtime"))] = (
            float(row["s"]),
            *(
                float(row[column]) if row.get(column) not in (None, "", "NA") else float("nan")
                for column in ("max_rss", "max_pss")
            ),
        )
    return found


def hash_decode(path: Path) -> None:
    data = path.read_bytes()
    hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def reencode(path: Path) -> None:
    with Image.open(path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90, optimize=True)


def floors(images: Path, count: int, pool: str) -> dict[str, float]:
    """Per-image work measured directly: hash+decode, small JSON writes, re-encodes, on every
    core: ``pool`` "threads" (a thread pool) or "processes" (worker processes, as the stages
    run it: Pillow's JPEG encoder holds the GIL, so threads do not scale it)."""
    paths = sorted(images.glob("*.jpg"))[:count]
    workers = os.cpu_count() or 1

    def every(function) -> float:
        started = time.perf_counter()
        if pool == "threads":
            with ThreadPoolExecutor(max_workers=workers) as threads:
                list(threads.map(function, paths))
        else:
            list(map_in_processes(function, paths, workers))
        return time.perf_counter() - started

    result = {"sha256 + decode every image": every(hash_decode)}
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        for i, path in enumerate(paths):
            (Path(scratch) / f"{i}.json").write_text(json.dumps({"image_id": path.stem, "i": i}))
        result["write N small JSON files"] = time.perf_counter() - started
    result["re-encode every image"] = every(reencode)
    return result


def run_size(
    size: int, add: int, root: Path, image_size: tuple[int, int] = (320, 240)
) -> dict[str, object]:
    data = root / f"data-{size}"
    images = data / "images"
    table = data / "metadata.csv"
    started = time.perf_counter()
    write_table(table, make_images(images, 0, size, size=image_size), append=False)
    print(f"[{size}] made {size} images in {time.perf_counter() - started:.0f} s", flush=True)
    workdir = workflow_copy(root / f"wf-{size}", images, table)
    startup = min(snakemake(workdir, "--version") for _ in range(2))
    full = snakemake(workdir)
    full_jobs = job_times(workdir)
    noop = snakemake(workdir, "-n")
    write_table(table, make_images(images, size, add, seed=10**7, size=image_size), append=True)
    rerun_started = time.time()
    rerun = snakemake(workdir)
    rerun_jobs = job_times(workdir, since=rerun_started)
    measured = floors(images, size, "processes")
    measured_threads = floors(images, size, "threads")
    report = {
        "size": size,
        "add": add,
        "startup_s": startup,
        "full_s": full,
        "noop_dry_run_s": noop,
        "add_rerun_s": rerun,
        "floors_s": measured,
        "floors_threads_s": measured_threads,
        "full_jobs": full_jobs,
        "rerun_jobs": rerun_jobs,
    }
    print_report(report)
    return report


def print_report(report: dict[str, object]) -> None:
    size, add = report["size"], report["add"]
    floors_s: dict[str, float] = report["floors_s"]  # type: ignore[assignment]
    startup = float(report["startup_s"])  # type: ignore[arg-type]
    full = float(report["full_s"])  # type: ignore[arg-type]
    rerun = float(report["add_rerun_s"])  # type: ignore[arg-type]
    noop = float(report["noop_dry_run_s"])  # type: ignore[arg-type]
    print(f"\n## {size:,} images, add {add}\n")
    print("| measure | seconds |\n|---|---:|")
    print(f"| snakemake --version (start-up) | {startup:.1f} |")
    print(f"| full run | {full:.1f} |")
    print(f"| no-op `snakemake -n` | {noop:.1f} (workflow's own: {noop - startup:.1f}) |")
    print(f"| add {add} images, rerun | {rerun:.1f} ({100 * rerun / full:.1f}% of full) |")
    threads_s: dict[str, float] = report.get("floors_threads_s", {})  # type: ignore[assignment]
    for name, seconds in floors_s.items():
        in_threads = f" (thread pool: {threads_s[name]:.1f})" if name in threads_s else ""
        print(f"| floor: {name} | {seconds:.1f}{in_threads} |")
    print(f"| full run / sum of floors | {full / sum(floors_s.values()):.2f}x |")
    for title, key in (("full run", "full_jobs"), (f"add {add}, rerun", "rerun_jobs")):
        print(f"\n| job ({title}) | seconds | peak RSS MB | peak PSS MB |\n|---|---:|---:|---:|")
        jobs: dict[str, tuple[float, float, float]] = report[key]  # type: ignore[assignment]
        for name, (seconds, rss, pss) in sorted(jobs.items(), key=lambda kv: -kv[1][0]):
            print(f"| {name} | {seconds:.1f} | {rss:.0f} | {pss:.0f} |")
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--add", type=int, default=100)
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=[320, 240],
        metavar=("WIDTH", "HEIGHT"),
        help="of the synthetic JPEGs (e.g. 48 36 for a million-image run of the DAG's memory)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="geolocsft-incremental-"))
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; in {root}"
    )
    reports = [run_size(size, args.add, root, tuple(args.image_size)) for size in args.sizes]
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1, default=str))


if __name__ == "__main__":
    main()
