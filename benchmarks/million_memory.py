"""Peak memory of the jobs that hold a whole corpus, on a million synthetic rows (issue #13).

    .venv/bin/python benchmarks/million_memory.py [--rows 1000000] [--workdir DIR] [--src SRC]

The full DAG at a million images (``benchmarks/incremental.py --sizes 1000000 --image-size 48 36``)
takes most of an hour here; this runs the three jobs that held every row in memory on the same
amount of data, in minutes, without images:

* ``knn``: the kNN baseline's prediction (``predict_knn``: 750k training x 250k query feature
  vectors of 128 floats, read from the features file as the workflow does);
* ``leakage``: the leakage check as on a rerun (every dHash in the memo; ``find_leaks``);
* ``dataset``: an SFT dataset (``build_dataset``, ``answer`` target, 5% validation) of the 750k
  train images: every caption file read and validated, every media file linked from the memo
  (as on a rerun, the media memo holding each image's prepared file).

Each job runs in its own process; the figures are its wall time and the peak, over the job and
its worker processes, of their summed PSS (shared pages divided among the processes: the real
footprint) and of their summed RSS (what Snakemake's ``max_rss`` reports: forked workers count
the pages they share with the job once each). ``--src`` runs another checkout's ``src`` (for a
before/after comparison on the same data).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

JOBS = ("knn", "leakage", "dataset")
FEATURE_DIM = 128


def make_inputs(root: Path, rows: int) -> None:
    """The synthetic corpus: manifest, features, dHash memo, caption files, index, media memo."""
    from geolocsft.layout import shard_of

    if (root / "done").exists():
        return
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(rows)]
    sha = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    manifest = pl.DataFrame(
        {
            "image_id": ids,
            "path": [f"{root}/images/{i}.jpg" for i in ids],  # never opened: all memoized
            "sha256": sha,
            "bytes": rng.integers(1000, 5000, rows),
            "width": np.full(rows, 48),
            "height": np.full(rows, 36),
            "format": "JPEG",
            "mode": "RGB",
            "lat": np.degrees(np.arcsin(rng.uniform(-1, 1, rows))),
            "lon": rng.uniform(-180, 180, rows),
            "coord_source": "metadata",
            "source_row": np.arange(rows),
            "split": np.where(rng.random(rows) < 0.75, "train", "test"),
            "country_code": "FR",
            "admin1": "Ile-de-France",
            "admin2": "Paris",
            "nearest_place": "Paris",
            "place_distance_km": rng.uniform(0, 50, rows),
        }
    )
    manifest.write_parquet(root / "manifest.parquet")
    pl.DataFrame(
        {"image_id": ids, "features": rng.random((rows, FEATURE_DIM), dtype=np.float32)},
        schema={"image_id": pl.String, "features": pl.Array(pl.Float32, FEATURE_DIM)},
    ).write_parquet(root / "features.parquet")
    hashes = [f"{v:016x}" for v in rng.integers(0, 2**63, rows, dtype=np.int64)]
    pl.DataFrame({"key": sha, "phash": hashes}).write_parquet(root / "dhash.parquet")

    train = manifest.filter(pl.col("split") == "train")
    captions = root / "captions"
    relpaths = []
    for image_id, image_sha, lat, lon in train.select("image_id", "sha256", "lat", "lon").rows():
        relpath = f"{shard_of(image_id)}/{image_id}.json"
        (captions / relpath).parent.mkdir(parents=True, exist_ok=True)
        (captions / relpath).write_text(json.dumps(caption_document(image_id, image_sha, lat, lon)))
        relpaths.append(relpath)
    pl.DataFrame(
        {
            "image_id": train["image_id"],
            "status": "captioned",
            "flagged": False,
            "failure_reason": None,
            "caption_path": relpaths,
        },
        schema_overrides={"failure_reason": pl.String},
    ).write_csv(root / "index.csv")
    (root / "done").touch()


def caption_document(image_id: str, image_sha: str, lat: float, lon: float) -> dict[str, object]:
    """An answer-only caption file as the ``metadata`` backend writes it (the fields read)."""
    return {
        "schema_version": "geocaption-2",
        "image_id": image_id,
        "image_sha256": image_sha,
        "caption": {
            "thinking": None,
            "answer": {
                "coordinates": {
                    "latitude": round(lat, 6),
                    "longitude": round(lon, 6),
                    "region": "Paris",
                },
                "final_location_confirmation": {
                    "confirmed_location": "Paris",
                    "decisive_features": [],
                    "accuracy_assessment": "from the photo's recorded GPS position",
                },
            },
        },
    }


def run_job(job: str, root: Path) -> None:
    """One job, in this process (the child), read as that code's own script reads its inputs
    (a checkout from before issue #13's memory work read whole manifests and feature tables)."""
    manifest_path = root / "manifest.parquet"
    if job == "knn":
        from geolocsft import baselines
        from geolocsft.settings import configured
        from geolocsft.splits import evaluation_targets

        columns = getattr(baselines, "BASELINE_MANIFEST_COLUMNS", None)
        train = baselines.training_set(pl.read_parquet(manifest_path, columns=columns))
        targets = evaluation_targets(pl.read_parquet(manifest_path, columns=columns))
        features: pl.DataFrame | pl.LazyFrame = (
            pl.scan_parquet(root / "features.parquet")
            if columns
            else pl.read_parquet(root / "features.parquet")
        )
        target_features = (
            features if columns else pl.read_parquet(root / "features.parquet")
        )  # the script reads the corpus' and the eval set's file: here the same one
        settings = configured(baselines.KnnSettings)
        predictions = baselines.predict_knn(train, features, targets, target_features, settings)
        predictions.write_csv(root / "knn.csv")
    elif job == "leakage":
        import shutil

        from geolocsft import leakage
        from geolocsft.settings import configured

        memo = root / "memo"
        folder = leakage.hash_memo(memo).folder  # versioned by the code: as on a rerun
        if not list(folder.glob("part-*.parquet")):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "dhash.parquet", folder / "part-0.parquet")
        reader = getattr(leakage, "read_leakage_columns", pl.read_parquet)
        corpus = reader(manifest_path)
        settings = configured(leakage.LeakageSettings)
        leakage.find_leaks(corpus, {}, settings, memo_dir=memo).write_csv(root / "leakage.csv")
    elif job == "dataset":
        import shutil

        from geolocsft.memo import BlobStore, ItemTable
        from geolocsft.settings import configured
        from geolocsft.sft import dataset

        settings = configured(
            dataset.DatasetSettings, name="geo", target="answer", validation_fraction=0.05
        )
        memo = root / "memo"
        media = ItemTable(memo, "sft_media", dataset.media_memo_version(settings))
        columns = getattr(dataset, "DATASET_MANIFEST_COLUMNS", None)
        manifest = pl.read_parquet(manifest_path, columns=columns)
        if not media.parts():  # every image's media file in the memo (40 distinct blobs)
            blobs = [BlobStore(memo).put(f"jpeg {i} ".encode() * 50) for i in range(40)]
            keys = manifest["sha256"]
            digests = [blobs[i % len(blobs)] for i in range(len(keys))]
            media.add(pl.DataFrame({"key": keys, "media_sha256": digests}))
        out = root / "dataset"
        shutil.rmtree(out, ignore_errors=True)
        index = getattr(dataset, "read_caption_index", pl.read_csv)(root / "index.csv")
        dataset.build_dataset(
            manifest, index, root / "captions", "Where?\n", settings, out,
            memo_dir=memo, workers=2, progress=False,
        )  # fmt: skip
    else:
        raise SystemExit(f"unknown job {job}")


def _tree(pid: int) -> list[int]:
    found = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        found += _tree(int(child))
    return found


def _memory_kb(pid: int) -> tuple[int, int]:
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return 0, 0
    fields = {line.split(":")[0]: int(line.split()[1]) for line in lines}
    return fields.get("Pss", 0), fields.get("Rss", 0)


def measure(job: str, root: Path, src: Path | None) -> tuple[float, float, float]:
    """(wall s, peak summed PSS MB, peak summed RSS MB) of one job in a child process."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    command = [sys.executable, __file__, "--job", job, "--workdir", str(root)]
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    peak_pss = peak_rss = 0
    while child.poll() is None:
        sizes = [_memory_kb(pid) for pid in _tree(child.pid)]
        peak_pss = max(peak_pss, sum(p for p, _ in sizes))
        peak_rss = max(peak_rss, sum(r for _, r in sizes))
        time.sleep(0.05)
    if child.returncode != 0:
        raise SystemExit(f"job {job} failed ({child.returncode})")
    return time.perf_counter() - started, peak_pss / 1024, peak_rss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--src", type=Path, default=None, help="another checkout's src/")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--job", choices=JOBS, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="geolocsft-million-"))
    if args.job:
        run_job(args.job, root)
        return
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    make_inputs(root, args.rows)
    print(f"{args.rows:,} rows in {root} ({time.perf_counter() - started:.0f} s to make)")
    print(f"code: {args.src or 'this checkout'}; {os.cpu_count()} CPUs\n")
    print("| job | wall s | peak PSS MB | peak RSS (summed) MB |\n|---|---:|---:|---:|")
    for job in args.jobs:
        wall, pss, rss = measure(job, root, args.src)
        print(f"| {job} | {wall:.1f} | {pss:.0f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
