"""Through the workflow: with scale_out.parts > 1 the kNN features are part jobs plus a gather,
and the gathered file is the same bytes as one job's; a rerun after adding an image computes the
new image's features only, with one thread (few new images), where the first run had two."""

from __future__ import annotations

import json
import shutil

import pytest
from test_workflow import copy_workflow, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.workflow

FEATURES = "results/baselines/features/corpus.parquet"


def test_feature_parts_gather_to_the_single_job_file(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    parts = write_config(workdir, scale_out={"parts": 3})
    plan = planned_jobs(workdir, "--configfile", str(parts))
    assert plan["image_features_part"] == 3 and plan["image_features"] == 1, plan
    snakemake(workdir, FEATURES, "--configfile", str(parts))
    gathered = (workdir / FEATURES).read_bytes()
    part_files = sorted((workdir / "results/baselines/features/corpus").glob("part-*.parquet"))
    assert len(part_files) == 3

    # One job, from an empty memo: the same bytes.
    shutil.rmtree(workdir / "results" / "baselines")
    shutil.rmtree(workdir / "cache" / "items" / "knn_features")
    # From 5 new images on, the job asks for its rule's 2 threads (counted at scheduling).
    single = write_config(workdir, scale_out={"parts": 1, "parallel_from_new_items": 5})
    snakemake(workdir, FEATURES, "--configfile", str(single), "--forcerun", "image_features")
    assert (workdir / FEATURES).read_bytes() == gathered
    record = workdir / "results/audit/provenance/image_features/corpus.json"
    assert json.loads(record.read_text())["threads"] == 2

    # An added image: the rerun computes its features only (the others come from the memo).
    images = workdir / "data" / "demo" / "images"
    from PIL import Image

    with Image.open(images / "Nexus_4.jpg") as source:
        exif = source.getexif().tobytes()
        source.rotate(90, expand=True).save(images / "Nexus_4_turned.jpg", exif=exif)
    snakemake(workdir, FEATURES, "--configfile", str(single))
    log = (workdir / "logs" / "baselines" / "features-corpus.log").read_text()
    assert "image features: 1 computed, 20 reused from the memo (21 images)" in log, log
    assert json.loads(record.read_text())["threads"] == 1  # one new image: one thread
