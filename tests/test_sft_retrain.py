"""When a run retrains, resumes or stays: planned by `snakemake -n` and run by the real Snakemake
with the real llamafactory-cli on the tiny model (CPU), on copies of one finished demo run.

* a changed training setting is planned and retrains from step 0 on the FIRST rerun, and the
  adapter's bytes change; settings that do not shape the model plan no training;
* new images retrain from step 0 (no "resuming");
* a run killed with kill -9 resumes from its newest checkpoint of the same fingerprint;
* a pinned run (retrain_when_dataset_changes: false) stays pinned when images are added, and
  still retrains when one of its own settings changes in the same rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import (
    SNAKEMAKE,
    copy_finished_run,
    copy_workflow,
    planned_jobs,
    snakemake,
)

pytestmark = pytest.mark.workflow

RUN = "tiny-demo"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo workflow run once to completion (up to the accuracy tables)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("finished"))
    snakemake(workdir)
    return workdir


def set_run(workdir: Path, **changes: object) -> None:
    """Change settings of the demo run in the copy's config/config.yaml."""
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["sft"]["runs"][RUN].update(changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def trained_steps(workdir: Path) -> list[int]:
    state = json.loads((workdir / "results" / "train" / RUN / "trainer_state.json").read_text())
    return [int(e["step"]) for e in state["log_history"] if "loss" in e]


def adapter_bytes(workdir: Path) -> bytes:
    return (workdir / "results/train" / RUN / "adapter/adapter_model.safetensors").read_bytes()


def train_log(workdir: Path) -> str:
    return (workdir / "logs" / "train" / f"{RUN}.log").read_text()


def add_image(workdir: Path, name: str = "HTC_Desire_mirrored.jpg") -> None:
    """A new photo of the corpus' train split (the id's salted hash puts it there; a mirrored
    copy keeps its EXIF GPS position)."""
    from PIL import Image

    with Image.open(workdir / "data/demo/images/HTC_Desire.jpg") as source:
        exif = source.getexif()
        source.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            workdir / "data/demo/images" / name, exif=exif.tobytes()
        )


def test_settings_that_do_not_shape_the_model_plan_no_training(finished, tmp_path):
    workdir = copy_finished_run(finished, tmp_path / "wf")
    assert planned_jobs(workdir) == {}
    set_run(
        workdir,
        slurm={"cpus_per_gpu": 4, "mem_mb": 9000, "runtime": 90},
        on_truncation="fail",
        evaluate_on=["holdout"],
    )
    assert planned_jobs(workdir) == {}
    set_run(workdir, predict={"max_new_tokens": 40})
    plan = planned_jobs(workdir)
    assert plan.get("predict_sft") == 1 and "sft_train" not in plan, plan
    assert "sft_token_stats" not in plan, plan


@pytest.mark.parametrize(
    ("change", "counts_too"),
    [({"lora_rank": 8}, False), ({"cutoff_len": 400}, True), ({"image_max_pixels": 40000}, True)],
)
def test_every_setting_that_shapes_the_model_plans_its_retrain(
    finished, tmp_path, change, counts_too
):
    workdir = copy_finished_run(finished, tmp_path / "wf")
    set_run(workdir, **change)
    plan = planned_jobs(workdir)
    assert plan.get("sft_train") == 1 and plan.get("predict_sft") == 1, plan
    assert ("sft_token_stats" in plan) is counts_too, plan


def test_a_changed_learning_rate_retrains_from_step_0_on_the_first_rerun(finished, tmp_path):
    workdir = copy_finished_run(finished, tmp_path / "wf")
    before, steps_before = adapter_bytes(workdir), trained_steps(workdir)
    set_run(workdir, learning_rate=3.0e-3)
    plan = planned_jobs(workdir)
    assert plan.get("sft_train") == 1, plan  # the first rerun, not a later one
    snakemake(workdir)
    log = train_log(workdir)
    assert "moved aside" in log and "learning_rate" in log and "step 0" in log
    assert "resuming from" not in log
    assert trained_steps(workdir) == steps_before  # all steps again, from step 1
    assert adapter_bytes(workdir) != before
    config = yaml.safe_load(
        (workdir / "results/train" / RUN / "llamafactory_train.yaml").read_text()
    )
    assert config["learning_rate"] == 3.0e-3 and "resume_from_checkpoint" not in config
    assert planned_jobs(workdir) == {}


def test_new_images_retrain_from_step_0(finished, tmp_path):
    workdir = copy_finished_run(finished, tmp_path / "wf")
    before = adapter_bytes(workdir)
    add_image(workdir)
    plan = planned_jobs(workdir)
    assert plan.get("sft_train") == 1 and plan.get("sft_dataset") == 1, plan
    snakemake(workdir, "--until", "sft_train")
    log = train_log(workdir)
    assert "resuming" not in log and "moved aside" in log and "dataset" in log
    assert trained_steps(workdir)[0] == 1
    assert adapter_bytes(workdir) != before


def test_a_killed_training_resumes_from_its_newest_checkpoint(finished, tmp_path):
    workdir = copy_finished_run(finished, tmp_path / "wf")
    set_run(workdir, save_steps=20, num_train_epochs=60)  # 180 steps, a checkpoint every 20
    checkpoints = workdir / "results" / "train" / RUN / "checkpoints"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    first = subprocess.Popen(
        [str(SNAKEMAKE), "--cores", "2", "--until", "sft_train"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not (checkpoints / "checkpoint-40" / "trainer_state.json").is_file():
            assert first.poll() is None and time.monotonic() < deadline, "no checkpoint-40"
            time.sleep(0.5)
        time.sleep(1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the job and the training, as a lost node
        first.wait()
    newest = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert 40 <= newest < 180
    complete = max(
        int(p.name.split("-")[1])
        for p in checkpoints.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
    )
    snakemake(workdir, "--unlock")  # the killed Snakemake left its lock
    snakemake(workdir, "--until", "sft_train")
    log = train_log(workdir)
    assert f"resuming from {checkpoints / f'checkpoint-{complete}'}" in log
    assert "moved aside" not in log
    steps = trained_steps(workdir)
    # The resumed run logged steps complete+1 .. 180 (the killed run's history up to its
    # checkpoint comes back with the checkpoint's trainer state).
    assert steps[-1] == 180 and f"global step {complete}" in log


def test_a_pinned_run_stays_pinned_but_retrains_when_its_own_settings_change(finished, tmp_path):
    workdir = copy_finished_run(finished, tmp_path / "wf")
    pinned = adapter_bytes(workdir)
    # Images added first, the run pinned after: it keeps the data it was trained on (its own
    # dataset folder), so nothing that trains is planned, then or after the dataset is rebuilt.
    add_image(workdir)
    set_run(workdir, retrain_when_dataset_changes=False)
    plan = planned_jobs(workdir)
    assert plan.get("sft_dataset") == 1 and "sft_train" not in plan, plan
    assert "sft_token_stats" not in plan, plan
    snakemake(workdir, "--until", "sft_dataset")
    assert "sft_train" not in planned_jobs(workdir) and adapter_bytes(workdir) == pinned
    # A changed learning rate still retrains a pinned run, on the data it was pinned to.
    set_run(workdir, learning_rate=3.0e-3)
    plan = planned_jobs(workdir)
    assert plan.get("sft_train") == 1 and "sft_run_dataset" not in plan, plan
    snakemake(workdir, "--until", "sft_train")
    assert "resuming" not in train_log(workdir)
    assert adapter_bytes(workdir) != pinned
    samples = json.loads(
        (workdir / "results/train" / RUN / "dataset" / "geocaptions.json").read_text()
    )
    grown = json.loads((workdir / "results/sft/geocaptions/geocaptions.json").read_text())
    assert len(grown) == len(samples) + 1  # the pinned run still trains on its snapshot


def test_fresh_plans_of_parts_and_of_a_pinned_run(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    one = planned_jobs(workdir)
    assert "sft_media" not in one and "sft_token_counts" not in one  # parts: 1, one job each
    assert one["sft_run_dataset"] == 1  # the dataset folder the run trains on
    assert one["sft_dataset"] == 1 and one["sft_token_stats"] == 1
    parts = workdir / "config" / "parts.yaml"
    parts.write_text(yaml.safe_dump({"scale_out": {"parts": 3}}))
    three = planned_jobs(workdir, "--configfile", str(parts))
    assert three["sft_media"] == 3 and three["sft_token_counts"] == 3, three
    assert three["sft_dataset"] == 1 and three["sft_token_stats"] == 1, three
    # A pinned run on a fresh workflow: its snapshot is made once, from the dataset.
    set_run(workdir, retrain_when_dataset_changes=False)
    pinned = planned_jobs(workdir)
    assert pinned["sft_run_dataset"] == 1 and pinned["sft_train"] == 1, pinned
