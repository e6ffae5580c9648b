"""Provenance, the audit manifest, `geolocsft audit`, and the add-images story, on a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from test_workflow import copy_finished_run, copy_workflow, planned_jobs, snakemake

from geolocsft.audit import artifact_digest, build_manifest
from geolocsft.io import file_sha256

pytestmark = pytest.mark.workflow

GEOLOCSFT = Path(sys.executable).with_name("geolocsft")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run once to completion (read-only: tests work on copies)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("audited"))
    snakemake(workdir)
    return workdir


def run_audit(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GEOLOCSFT), "audit", "--directory", str(workdir), "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def findings_by_status(result: subprocess.CompletedProcess[str]) -> dict[str, set[str]]:
    by_status: dict[str, set[str]] = {}
    for finding in json.loads(result.stdout):
        by_status.setdefault(finding["status"], set()).add(finding["path"])
    return by_status


def test_manifest_lists_every_artifact_with_its_sha256_and_provenance(finished_run):
    manifest = json.loads((finished_run / "results/audit/manifest.json").read_text())
    artifacts = manifest["artifacts"]
    covered = set()
    for path, entry in artifacts.items():
        target = finished_run / path
        if entry["kind"] == "directory":
            covered |= {p for p in target.rglob("*") if p.is_file()}
        else:
            covered.add(target)
            assert entry["sha256"] == file_sha256(target), path
    produced = {
        p
        for p in (finished_run / "results").rglob("*")
        if p.is_file()
        and p.name != ".snakemake_timestamp"
        and not p.is_relative_to(finished_run / "results/runtime")  # `benchmark:` timings
        and "checkpoints" not in p.parts  # resume state of training, kept outside the outputs
    }
    assert produced - covered == {finished_run / "results/audit/manifest.json"}
    assert artifacts["results/eval/summary.md"]["rule"] == "evaluate_summary"

    record = json.loads(
        (finished_run / artifacts["results/train/tiny-demo/adapter"]["provenance"]).read_text()
    )
    assert record["rule"] == "sft_train" and record["wildcards"] == {"run": "tiny-demo"}
    assert record["params"]["settings"]["model"] == "tiny-qwen2vl"
    assert "sft.train" in record["code"]["modules"] and record["code"]["version"]
    for package in ("torch", "transformers", "llamafactory", "peft", "snakemake"):
        assert record["packages"][package]
    # The run trains on its own dataset folder: hard links to the dataset's files.
    dataset = "results/train/tiny-demo/dataset"
    assert record["inputs"][dataset] == artifact_digest(finished_run / dataset)
    trained_on = finished_run / dataset / "geocaptions.json"
    built = finished_run / "results/sft/geocaptions/geocaptions.json"
    assert trained_on.stat().st_ino == built.stat().st_ino
    model = "results/models/tiny-qwen2vl"
    assert record["inputs"][model] == artifact_digest(finished_run / model)
    assert record["outputs"]["results/train/tiny-demo/adapter"]["kind"] == "directory"
    caption_record = json.loads(
        (finished_run / "results/audit/provenance/geocaption/job.json").read_text()
    )
    assert caption_record["params"]["prompt_version"] == "geocaption-v1"


def test_audit_is_clean_then_names_missing_changed_and_other_code_or_config(finished_run, tmp_path):
    workdir = copy_finished_run(finished_run, tmp_path / "wf")
    clean = run_audit(workdir)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert set(findings_by_status(clean)) == {"ok"}

    (workdir / "results/eval/summary.md").write_text("| edited by hand |\n")
    (workdir / "results/eval/knn/holdout/per_image.csv").unlink()
    with (workdir / "src/geolocsft/baselines.py").open("a") as module:
        module.write("\n# a change to the baselines' code\n")
    other_config = tmp_path / "other.yaml"
    other_config.write_text("evaluate:\n  bootstrap_resamples: 10\n")

    drift = run_audit(workdir, "--configfile", str(other_config))
    assert drift.returncode == 2, drift.stderr
    found = findings_by_status(drift)
    assert found["changed"] == {"results/eval/summary.md"}
    assert found["missing"] == {"results/eval/knn/holdout/per_image.csv"}
    assert {
        "results/predictions/knn/holdout.csv",
        "results/predictions/medoid/holdout.csv",
    } <= found["code_changed"]
    # The features are geolocsft.features' work, which does not import the baselines.
    assert "results/baselines/features/corpus.parquet" in found["ok"]
    assert "results/eval/tiny-demo/holdout/accuracy.json" in found["config_changed"]
    assert "results/predictions/tiny-demo/holdout.csv" in found["ok"]
    text = subprocess.run(
        [str(GEOLOCSFT), "audit", "-d", str(workdir), "--no-snakemake"],
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    assert "missing         results/eval/knn/holdout/per_image.csv" in text


def test_manifest_builder_refuses_a_file_that_is_not_a_provenance_record(tmp_path):
    from geolocsft.errors import GeolocsftError

    bogus = tmp_path / "job.json"
    bogus.write_text('{"schema": "something-else"}')
    with pytest.raises(GeolocsftError, match=r"job.json: not a geolocsft-provenance-1 record"):
        build_manifest([bogus])


def add_photos(workdir: Path, count: int) -> list[str]:
    """New demo photos (mirrored copies of one, with its GPS tags); returns their ids."""
    from PIL import Image

    ids = []
    with Image.open(workdir / "data/demo/images/HTC_Desire.jpg") as source:
        exif = source.getexif().tobytes()
        for i in range(count):
            image_id = f"HTC_Desire_variant{i}"
            variant = source.rotate(2 * (i + 1)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            variant.save(workdir / f"data/demo/images/{image_id}.jpg", exif=exif)
            ids.append(image_id)
    return ids


def test_adding_images_reruns_the_chain_and_a_pinned_model_is_not_retrained(finished_run, tmp_path):
    workdir = copy_finished_run(finished_run, tmp_path / "wf")
    captions_dir = workdir / "results/geocaptions/metadata/geocaption-v1/captions"
    old_captions = {p.name: p.read_bytes() for p in captions_dir.rglob("*.json")}
    new_ids = add_photos(workdir, 4)

    # Snakemake says why: the ingest job's param `images` (a digest of the image folder's
    # listing; the image files are not Snakemake inputs, so planning stays independent of their
    # number) changed, and everything after it will have an updated input.
    summary = snakemake(workdir, "--summary").stdout
    status = {
        row.split("\t")[0]: row.split("\t")[4]
        for row in summary.splitlines()
        if row.count("\t") >= 5
    }
    assert status["results/manifest.parquet"] == "params changed"
    assert status["results/sft/geocaptions/geocaptions.json"] == "ok"
    assert summary.count("update pending") > 10

    plan = planned_jobs(workdir)
    for rule in ("ingest_corpus", "geocaption", "sft_dataset", "sft_train", "evaluate"):
        assert rule in plan, plan
    pinned_config = tmp_path / "pinned.yaml"  # merged into config/config.yaml
    pinned_config.write_text(
        "sft:\n  runs:\n    tiny-demo:\n      retrain_when_dataset_changes: false\n"
    )
    pinned = ("--configfile", str(pinned_config))
    pinned_plan = planned_jobs(workdir, *pinned)
    assert "sft_train" not in pinned_plan and "sft_dataset" in pinned_plan
    assert "predict_sft" in pinned_plan  # the holdout may have changed: predictions are redone

    adapter = workdir / "results/train/tiny-demo/adapter/adapter_model.safetensors"
    adapter_before = adapter.read_bytes()
    snakemake(workdir, *pinned)
    assert adapter.read_bytes() == adapter_before
    manifest = pl.read_parquet(workdir / "results/manifest.parquet")
    assert set(new_ids) <= set(manifest["image_id"])
    train_ids = set(manifest.filter(pl.col("split") == "train")["image_id"])
    captions = {p.name: p.read_bytes() for p in captions_dir.rglob("*.json")}
    # Old captions come back byte for byte; the new training images got theirs.
    assert {k: v for k, v in captions.items() if k in old_captions} == old_captions
    assert set(captions) - set(old_captions) == {f"{i}.json" for i in set(new_ids) & train_ids}
    dataset = json.loads((workdir / "results/sft/geocaptions/geocaptions.json").read_text())
    # The added photos are slightly rotated copies of one photo: a copy in the test split makes
    # the training copies near-duplicates of an eval image, which never reach the dataset.
    excluded = set(pl.read_csv(workdir / "results/leakage/train_excluded.csv")["image_id"])
    assert len(dataset) == len(train_ids - excluded)
    assert planned_jobs(workdir, *pinned) == {}
    assert run_audit(workdir, "--no-snakemake").returncode == 0
