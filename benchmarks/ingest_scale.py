"""Benchmark of ingest and planning at scale: dry runs, the ingest job, reruns after adding images.

    .venv/bin/python benchmarks/ingest_scale.py [--images N] [--layout nested|flat]
        [--repeats R] [--before DIR] [--skip-run] [--workdir DIR]

A corpus of ``N`` (1,000,000) distinct, real 32x32 JPEGs (about 900 bytes each: the same pixels
with a JPEG comment holding the index, so every file has its own sha256) in folders of 1,000
(``--layout nested``, ``dNNNN/iNNNNNNN.jpg``) or in one folder (``flat``), and a metadata table
with one row per image. A copy of the workflow (this checkout) with the demo config, the corpus
replaced by this one. Timed, each as a separate process whose peak RSS is read with ``wait4``:

1. ``snakemake -n`` of the whole DAG from scratch (``R`` times): the planning cost;
2. with ``--before DIR`` (an older checkout, e.g. ``git archive <commit> | tar -x -C DIR``), the
   same dry run with that workflow (which declares every image file an input);
3. unless ``--skip-run``: ``snakemake --until ingest_corpus`` (every image checked), the no-op
   ``-n`` after it (``R`` times), then 100 images added and ``--until ingest_corpus`` again
   (the memo answers for the others), with the job's own time and peak RSS from its
   ``benchmark:`` file; the sizes of the manifest, the listing, the provenance record and
   ``.snakemake/metadata``; the time to read the manifest; and listing one folder of 1,000
   images against the flat folder.

Prints one table (medians) and writes ``results.json`` in the work folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PARTS = ("Snakefile", "rules", "scripts", "src", "config", "envs", "report", "profiles")
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def tiny_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def numbered(jpeg: bytes, index: int) -> bytes:
    """The same JPEG with a comment segment holding ``index`` (distinct bytes, same pixels)."""
    text = f"geolocsft benchmark image {index}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def relpath(index: int, layout: str) -> str:
    return f"d{index // 1000:04d}/i{index:07d}.jpg" if layout == "nested" else f"i{index:07d}.jpg"


def make_corpus(folder: Path, table: Path, start: int, count: int, layout: str) -> None:
    jpeg = tiny_jpeg()
    rng = np.random.default_rng(start)
    lats = rng.uniform(-60, 70, count).round(5)
    lons = rng.uniform(-180, 180, count).round(5)
    rows = []
    for offset in range(count):
        index = start + offset
        path = folder / relpath(index, layout)
        if offset % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(numbered(jpeg, index))
        rows.append(f"{relpath(index, layout)},{lats[offset]},{lons[offset]}\n")
    mode = "a" if table.exists() else "w"
    with table.open(mode) as handle:
        if mode == "w":
            handle.write("id,lat,lon\n")
        handle.writelines(rows)


def workflow_copy(source: Path, dest: Path, corpus: Path, table: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for part in PARTS:
        if (source / part).is_dir():
            shutil.copytree(
                source / part, dest / part, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(source / part, dest / part)
    config = yaml.safe_load((dest / "config" / "config.yaml").read_text())
    config["corpus"] = {
        "name": "bench",
        "images": str(corpus),
        "metadata": str(table),
        "columns": {"id": None, "lat": None, "lon": None, "file": None},
    }
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


def timed(command: list[str], cwd: Path) -> tuple[float, float, str, float]:
    """Wall seconds, peak RSS (MB), output and CPU seconds (user + system) of one process and
    its children (CPU time is what a busy shared machine does not inflate)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{text[-3000:]}")
    # wait4 reports the child with the children it waited for (the jobs of a Snakemake run).
    return wall, usage.ru_maxrss / 1024, text, usage.ru_utime + usage.ru_stime


def dry_runs(workdir: Path, repeats: int, *args: str) -> dict[str, float]:
    walls, rss, cpus = [], [], []
    for _ in range(repeats):
        wall, peak, _, cpu = timed(
            [str(SNAKEMAKE), "--cores", "2", "-n", "--quiet", *args], workdir
        )
        walls.append(wall)
        rss.append(peak)
        cpus.append(cpu)
    return {
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "median_cpu_s": statistics.median(cpus),
        "peak_rss_mb": max(rss),
    }


def one_rule_floor(workdir: Path, repeats: int) -> dict[str, float]:
    """A dry run of a one-rule Snakefile: what any Snakemake start costs on this machine."""
    floor = workdir / "floor"
    floor.mkdir(exist_ok=True)
    (floor / "Snakefile").write_text('rule a:\n    output: "a.txt"\n    shell: "touch {output}"\n')
    return dry_runs(floor, repeats)


def job_benchmark(workdir: Path) -> dict[str, float]:
    row = pl.read_csv(workdir / "results/runtime/ingest/corpus.tsv", separator="\t").row(
        0, named=True
    )
    return {"job_s": float(row["s"]), "job_max_rss_mb": float(row["max_rss"])}


def size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def listing_seconds(folder: Path) -> float:
    start = time.perf_counter()
    with os.scandir(folder) as scan:
        sum(1 for _ in scan)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--layout", choices=("nested", "flat"), default="nested")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="an older checkout to compare (flat layout)")
    parser.add_argument("--skip-run", action="store_true")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="geolocsft-ingest-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    corpus, table = root / "corpus", root / "metadata.csv"
    results: dict[str, Any] = {"images": args.images, "layout": args.layout}
    if not table.exists():
        start = time.perf_counter()
        make_corpus(corpus, table, 0, args.images, args.layout)
        results["make_corpus_s"] = time.perf_counter() - start
    print(f"corpus: {args.images:,} images in {corpus} ({args.layout})", flush=True)

    results["snakemake_floor"] = one_rule_floor(root, args.repeats)
    after = workflow_copy(REPO, root / "after", corpus, table)
    results["dry_run_after"] = dry_runs(after, args.repeats)
    print("dry run (this checkout):", results["dry_run_after"], flush=True)
    if args.before:
        before = workflow_copy(args.before, root / "before", corpus, table)
        results["dry_run_before"] = dry_runs(before, 1)
        print("dry run (before):", results["dry_run_before"], flush=True)

    if not args.skip_run:
        wall, _, _, cpu = timed([str(SNAKEMAKE), "--cores", "2", "--until", "ingest_corpus"], after)
        results["first_ingest"] = {"wall_s": wall, "cpu_s": cpu, **job_benchmark(after)}
        print("first ingest:", results["first_ingest"], flush=True)
        results["noop_dry_run"] = dry_runs(after, args.repeats)
        print("no-op dry run:", results["noop_dry_run"], flush=True)
        make_corpus(corpus, table, args.images, 100, args.layout)
        wall, _, _, cpu = timed([str(SNAKEMAKE), "--cores", "2", "--until", "ingest_corpus"], after)
        results["add_100_ingest"] = {"wall_s": wall, "cpu_s": cpu, **job_benchmark(after)}
        print("add 100, ingest:", results["add_100_ingest"], flush=True)
        start = time.perf_counter()
        manifest = pl.read_parquet(after / "results/manifest.parquet")
        results["read_manifest_s"] = time.perf_counter() - start
        results["manifest_rows"] = manifest.height
        results["sizes_mb"] = {
            "manifest.parquet": size_mb(after / "results/manifest.parquet"),
            "listing.parquet": size_mb(after / "results/ingest/listing.parquet"),
            "provenance record": size_mb(after / "results/audit/provenance/ingest_corpus/job.json"),
            ".snakemake/metadata": size_mb(after / ".snakemake/metadata"),
            "memo": size_mb(after / "cache/items"),
        }
        print("sizes (MB):", results["sizes_mb"], flush=True)
    folder = corpus / "d0000" if args.layout == "nested" else corpus
    results["list_one_folder_s"] = listing_seconds(folder)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
