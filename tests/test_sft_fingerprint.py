"""A run's fingerprint and which checkpoints it may resume (tests/test_sft_retrain.py runs it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest

from geolocsft.sft.fingerprint import (
    FINGERPRINT_FILE,
    checkpoint_to_resume,
    fingerprint_of,
    fingerprint_record,
    stamp,
)
from geolocsft.sft.train import RunSettings, render_config

LAUNCH = {"processes_per_node": 1, "nodes": 1, "device": "cpu", "deepspeed": False}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (model / "model.safetensors").write_bytes(b"weights")
    data = tmp_path / "data"
    (data / "media" / "ab").mkdir(parents=True)
    (data / "geo.json").write_text("[]")
    (data / "dataset_info.json").write_text("{}")
    pl.DataFrame({"path": ["media/ab/x.jpg"], "sha256": ["aa"]}).write_parquet(
        data / "media_sha256.parquet"
    )
    return model, data


def record(folders: tuple[Path, Path], tmp_path: Path, code: str = "c:1", **changes: object):
    model, data = folders
    run = RunSettings.from_config("r", {"dataset": "geo", "bf16": False, **changes})
    options = {
        "model_path": model,
        "dataset_dir": data,
        "output_dir": tmp_path / "out",
        "deepspeed_dir": tmp_path / "ds",
        "template": "qwen2_vl",
        "has_validation": False,
        "resume_from": None,
    }
    config = render_config(run, **options)
    return fingerprint_record(config, model_dir=model, dataset_dir=data, launch=LAUNCH, code=code)


def test_what_shapes_the_weights_changes_the_fingerprint_and_nothing_else(folders, tmp_path):
    base = fingerprint_of(record(folders, tmp_path))
    assert fingerprint_of(record(folders, tmp_path)) == base
    assert fingerprint_of(record(folders, tmp_path, learning_rate=3e-4)) != base
    assert fingerprint_of(record(folders, tmp_path, lora_rank=8)) != base
    assert fingerprint_of(record(folders, tmp_path, code="c:2")) != base
    # Where checkpoints go, how often they are saved and logging do not shape the weights.
    assert fingerprint_of(record(folders, tmp_path / "elsewhere")) == base
    assert fingerprint_of(record(folders, tmp_path, save_steps=7)) == base
    model, data = folders
    pl.DataFrame({"path": ["media/ab/x.jpg"], "sha256": ["bb"]}).write_parquet(
        data / "media_sha256.parquet"
    )
    changed_media = fingerprint_of(record(folders, tmp_path))
    assert changed_media != base
    (model / "model.safetensors").write_bytes(b"other weights")
    assert fingerprint_of(record(folders, tmp_path)) not in {base, changed_media}
    # A Hub model is its repo and resolved commit (the files are those of that commit).
    (model / "geolocsft_source.json").write_text(json.dumps({"repo_id": "o/m", "commit": "c1"}))
    hub = record(folders, tmp_path)
    assert hub["model"] == {"repo_id": "o/m", "commit": "c1"}


def checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"w")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_a_killed_run_resumes_its_newest_complete_checkpoint(folders, tmp_path, caplog):
    out = tmp_path / "run" / "checkpoints"
    first = record(folders, tmp_path)
    assert checkpoint_to_resume(out, first, "r") is None  # nothing yet: from step 0
    assert json.loads((out / FINGERPRINT_FILE).read_text())["fingerprint"] == fingerprint_of(first)
    checkpoint(out, 5)
    newest = checkpoint(out, 10)
    half_written = checkpoint(out, 15, complete=False)
    with caplog.at_level(logging.INFO, logger="geolocsft.sft.fingerprint"):
        assert checkpoint_to_resume(out, first, "r") == newest
    assert not half_written.exists()
    assert "resuming from" in caplog.text and "checkpoint-10" in caplog.text
    stamp(out, [newest])
    assert (newest / FINGERPRINT_FILE).read_bytes() == (out / FINGERPRINT_FILE).read_bytes()


def test_checkpoints_of_another_configuration_are_moved_aside(folders, tmp_path, caplog):
    out = tmp_path / "run" / "checkpoints"
    old = record(folders, tmp_path)
    checkpoint_to_resume(out, old, "r")
    checkpoint(out, 90)
    new = record(folders, tmp_path, learning_rate=5e-3)
    with caplog.at_level(logging.INFO, logger="geolocsft.sft.fingerprint"):
        assert checkpoint_to_resume(out, new, "r") is None
    aside = tmp_path / "run" / f"checkpoints.stale-{fingerprint_of(old)[:16]}"
    assert (aside / "checkpoint-90" / "trainer_state.json").is_file()  # kept, not deleted
    assert not list(out.glob("checkpoint-*"))
    assert "llamafactory_config.learning_rate" in caplog.text and "step 0" in caplog.text
    # Checkpoints from before fingerprints existed are set aside too.
    legacy = tmp_path / "legacy" / "checkpoints"
    checkpoint(legacy, 1020)
    assert checkpoint_to_resume(legacy, new, "r") is None
    assert (tmp_path / "legacy" / "checkpoints.stale-unknown" / "checkpoint-1020").is_dir()
