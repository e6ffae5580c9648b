"""Training-run plumbing that needs no GPU and no torch: YAML, launch environment, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from geolocsft.errors import GeolocsftError
from geolocsft.images import fit_to_model
from geolocsft.sft.predict import aggregate
from geolocsft.sft.train import (
    RunSettings,
    first_host,
    latest_checkpoint,
    launch_environment,
    render_config,
)


def settings(**changes: object) -> RunSettings:
    return RunSettings.from_config("r", {"dataset": "geo", **changes})


def render(run: RunSettings, tmp_path: Path, **kwargs: object) -> dict:
    options = {
        "model_path": tmp_path / "model",
        "dataset_dir": tmp_path / "data",
        "output_dir": tmp_path / "out",
        "deepspeed_dir": tmp_path / "ds",
        "has_validation": False,
        "resume_from": None,
        "on_gpu": True,
    }
    return render_config(run, **{**options, **kwargs})


def test_rendered_yaml_is_a_lora_sft_config_for_llamafactory(tmp_path):
    config = render(settings(lora_rank=8, extra={"flash_attn": "fa2"}), tmp_path)
    assert config["stage"] == "sft" and config["finetuning_type"] == "lora"
    assert config["dataset"] == "geo" and config["template"] == "qwen2_vl"
    assert config["dataset_dir"] == config["media_dir"] == str(tmp_path / "data")
    assert config["lora_rank"] == 8 and config["flash_attn"] == "fa2"
    assert config["overwrite_output_dir"] is True and "resume_from_checkpoint" not in config
    assert "deepspeed" not in config and "eval_dataset" not in config


def test_resume_validation_and_deepspeed(tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint-40"
    config = render(settings(deepspeed="z3"), tmp_path, has_validation=True, resume_from=checkpoint)
    assert config["resume_from_checkpoint"] == str(checkpoint)
    assert config["overwrite_output_dir"] is False
    assert config["eval_dataset"] == "geo_val"
    assert config["deepspeed"] == str(tmp_path / "ds" / "ds_z3_config.json")


def test_gpu_only_options_are_refused_on_a_cpu_machine(tmp_path):
    with pytest.raises(GeolocsftError, match="need a GPU"):
        render(settings(), tmp_path, on_gpu=False)  # bf16 defaults to true
    config = render(settings(bf16=False), tmp_path, on_gpu=False)
    assert config["bf16"] is False


def test_unknown_run_keys_are_named():
    with pytest.raises(GeolocsftError, match="lora_rnak"):
        RunSettings.from_config("r", {"dataset": "geo", "lora_rnak": 4})


def test_newest_checkpoint_is_found_by_step_number(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 40, 100, 9):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-final.txt").write_text("not a checkpoint")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-100"


def test_launch_environment_single_gpu_multi_gpu_and_multi_node():
    single = launch_environment(settings(), gpus_here=1, environ={})
    assert "FORCE_TORCHRUN" not in single and single["HF_HUB_OFFLINE"] == "1"
    cpu = launch_environment(settings(gpus=4), gpus_here=0, environ={})
    assert "FORCE_TORCHRUN" not in cpu
    node = launch_environment(settings(gpus=4), gpus_here=4, environ={})
    assert node["FORCE_TORCHRUN"] == "1" and node["NPROC_PER_NODE"] == "4"
    assert node["NNODES"] == "1" and "MASTER_ADDR" not in node
    slurm = {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    multi = launch_environment(settings(gpus=8, nodes=2), gpus_here=8, environ=slurm)
    assert multi["NNODES"] == "2" and multi["NODE_RANK"] == "1"
    assert multi["MASTER_ADDR"] == "gpu07"


def test_first_host_without_scontrol():
    assert first_host("node17") == "node17"
    assert first_host("gpu[01-04],gpu07") == "gpu01"


def test_multi_sample_answers_aggregate_to_the_geodesic_medoid():
    answers = [
        '{"latitude": 48.85, "longitude": 2.35}',
        "no idea",
        '{"latitude": 48.86, "longitude": 2.34}',
        '{"latitude": -33.9, "longitude": 151.2}',
    ]
    lat, lon, status, parsed = aggregate(answers)
    assert (lat, lon) in {(48.85, 2.35), (48.86, 2.34)}
    assert status == "medoid_of_3" and parsed == 3
    assert aggregate(["nothing here"]) == (None, None, "unparseable", 0)
    assert aggregate(['{"latitude": 1, "longitude": 2}'])[:3] == (1.0, 2.0, "json")


def test_images_are_fitted_like_llamafactory_does():
    from PIL import Image

    big = fit_to_model(Image.new("RGB", (2000, 1000)), max_pixels=50_176)
    assert big.width * big.height <= 50_176 and big.width == 2 * big.height
    tiny = fit_to_model(Image.new("L", (10, 5)), max_pixels=50_176)
    assert tiny.mode == "RGB" and min(tiny.size) >= 28
