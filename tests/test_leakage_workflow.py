"""Through the workflow: a photo of the corpus' test split under a second id, and a benchmark
photo that is also in the corpus, never reach the fine-tuning dataset or the baselines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import DEMO_IMAGES
from test_workflow import copy_workflow, snakemake, write_config

from geolocsft.splits import in_fraction

pytestmark = pytest.mark.workflow

SALT, TEST_FRACTION = "geolocsft-v1", 0.25


def is_test(image_id: str) -> bool:
    return in_fraction(image_id, TEST_FRACTION, SALT)


def test_leaked_images_are_reported_and_never_trained_on(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    images = workdir / "data" / "demo" / "images"
    stems = sorted(p.stem for p in DEMO_IMAGES.glob("*.jpg"))
    held_out = next(s for s in stems if is_test(s))
    trained = next(s for s in stems if not is_test(s))
    # The same bytes as a test photo, under an id that the split sends to training.
    twin = next(f"{held_out}_copy{i}" for i in range(100) if not is_test(f"{held_out}_copy{i}"))
    shutil.copyfile(images / f"{held_out}.jpg", images / f"{twin}.jpg")
    # A benchmark photo that is also a training photo of the corpus.
    bench = workdir / "data" / "bench"
    bench.mkdir()
    shutil.copyfile(images / f"{trained}.jpg", bench / "bench_photo.jpg")
    config = write_config(
        workdir,
        benchmarks={"mini": {"images": "data/bench", "metadata": None}},
        sft={
            "datasets": {
                "geocaptions": {"target": "coordinates", "instruction": "instruction-answer-v1"}
            },
            "runs": {},
        },
    )
    targets = [
        "results/leakage/train_excluded.csv",
        "results/sft/geocaptions/stats.json",
        "results/sft/geocaptions/geocaptions.json",
        "results/predictions/knn/holdout.csv",
        "results/predictions/knn/mini.csv",
    ]
    snakemake(workdir, *targets, "--configfile", str(config))

    report = pl.read_csv(workdir / "results" / "leakage" / "train_excluded.csv")
    pairs = set(report.select("image_id", "kind", "eval_set", "eval_image_id").rows())
    assert (twin, "identical", "holdout", held_out) in pairs
    assert (trained, "identical", "mini", "bench_photo") in pairs
    summary = json.loads((workdir / "results" / "leakage" / "summary.json").read_text())
    assert summary["excluded_training_images"] == 2

    samples = json.loads(
        (workdir / "results" / "sft" / "geocaptions" / "geocaptions.json").read_text()
    )
    in_dataset = {Path(image).stem for sample in samples for image in sample["images"]}
    stats = json.loads((workdir / "results" / "sft" / "geocaptions" / "stats.json").read_text())
    assert stats["skipped"]["in_an_eval_set"] == 2
    for leaked in (twin, trained):
        assert leaked not in in_dataset
        # kNN never finds them: they are not in its training set.
        for evalset in ("holdout", "mini"):
            answers = pl.read_csv(workdir / "results" / "predictions" / "knn" / f"{evalset}.csv")
            assert not answers["raw_answer"].str.contains(f"{leaked} (", literal=True).any()
