"""Training-run plumbing that needs no GPU and no training: YAML, templates, truncation check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geolocsft.errors import GeolocsftError
from geolocsft.sft.model_family import resolve_template, stop_token_ids, tiny_family
from geolocsft.sft.predict import aggregate
from geolocsft.sft.train import RunSettings, check_truncation, render_config


def settings(**changes: object) -> RunSettings:
    return RunSettings.from_config("r", {"dataset": "geo", **changes})


def render(run: RunSettings, tmp_path: Path, **kwargs: object) -> dict:
    options = {
        "model_path": tmp_path / "model",
        "dataset_dir": tmp_path / "data",
        "output_dir": tmp_path / "out",
        "deepspeed_dir": tmp_path / "ds",
        "template": "qwen2_vl",
        "has_validation": False,
        "resume_from": None,
    }
    return render_config(run, **{**options, **kwargs})


def test_rendered_yaml_is_a_lora_sft_config_for_llamafactory(tmp_path):
    config = render(settings(lora_rank=8, extra={"flash_attn": "fa2"}), tmp_path)
    assert config["stage"] == "sft" and config["finetuning_type"] == "lora"
    assert config["dataset"] == "geo" and config["template"] == "qwen2_vl"
    assert config["dataset_dir"] == config["media_dir"] == str(tmp_path / "data")
    assert config["lora_rank"] == 8 and config["flash_attn"] == "fa2"
    assert config["lr_scheduler_type"] == "cosine" and config["warmup_ratio"] == 0.0
    assert config["overwrite_output_dir"] is True and "resume_from_checkpoint" not in config
    assert "deepspeed" not in config and "eval_dataset" not in config


def test_resume_validation_deepspeed_and_full_fine_tuning(tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint-40"
    config = render(settings(deepspeed="z3"), tmp_path, has_validation=True, resume_from=checkpoint)
    assert config["resume_from_checkpoint"] == str(checkpoint)
    assert config["overwrite_output_dir"] is False
    assert config["eval_dataset"] == "geo_val"
    assert config["deepspeed"] == str(tmp_path / "ds" / "ds_z3_config.json")
    full = render(settings(finetuning_type="full"), tmp_path)
    assert full["finetuning_type"] == "full" and "lora_rank" not in full


def test_unknown_run_keys_are_named():
    with pytest.raises(GeolocsftError, match="lora_rnak"):
        RunSettings.from_config("r", {"dataset": "geo", "lora_rnak": 4})


def test_template_comes_from_the_models_config_unless_set(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert resolve_template(None, tmp_path) == "qwen2_vl"
    assert resolve_template("gemma3", tmp_path) == "gemma3"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    assert resolve_template(None, tmp_path) == "gemma3"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "brand_new_vlm"}))
    with pytest.raises(GeolocsftError, match=r"sft.runs.x.template .*brand_new_vlm|brand_new"):
        resolve_template(None, tmp_path, "x")
    assert tiny_family("tiny") == tiny_family("tiny-qwen2vl") == "qwen2vl"
    assert tiny_family("tiny-gemma3") == "gemma3" and tiny_family("Qwen/Qwen2.5-VL-7B") is None


class _Tokenizer:
    eos_token_id = 1


def test_stop_tokens_come_from_the_generation_config(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [106, 1]}))
    assert stop_token_ids(tmp_path, _Tokenizer()) == [106, 1]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 151645}))
    assert stop_token_ids(tmp_path, _Tokenizer()) == [151645, 1]


def test_on_truncation_fail_stops_before_training():
    stats = {
        "samples": 4,
        "cutoff_len": 100,
        "over_cutoff": {
            "count": 1,
            "image_tokens_cut": 0,
            "worst": [{"sample_id": "d448", "total_tokens": 130}],
        },
    }
    check_truncation(stats, "warn", "r")
    with pytest.raises(GeolocsftError, match=r"1 of 4 samples .*d448 \(130 tokens\)"):
        check_truncation(stats, "fail", "r")
    check_truncation({**stats, "over_cutoff": {**stats["over_cutoff"], "count": 0}}, "fail", "r")


def test_multi_sample_answers_aggregate_to_the_geodesic_medoid():
    answers = [
        '{"latitude": 48.85, "longitude": 2.35}',
        "no idea",
        '{"latitude": 48.86, "longitude": 2.34}',
        '{"latitude": -33.9, "longitude": 151.2}',
    ]
    lat, lon, status, parsed = aggregate(answers, "coordinates")
    assert (lat, lon) in {(48.85, 2.35), (48.86, 2.34)}
    assert status == "medoid_of_3" and parsed == 3
    assert aggregate(["nothing here"]) == (None, None, "unparseable", 0)
    assert aggregate(['{"latitude": 1, "longitude": 2}'])[:3] == (1.0, 2.0, "json")


def test_a_full_fine_tune_is_loaded_in_place_of_the_base_model(tmp_path):
    from geolocsft.sft.predict import processor_dir, trained_model

    base, out = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    out.mkdir()
    with pytest.raises(GeolocsftError, match="neither a LoRA adapter"):
        trained_model(base, out)
    (out / "adapter_config.json").write_text("{}")
    assert trained_model(base, out) == (base, out)  # LoRA: base model + adapter
    (out / "adapter_config.json").unlink()
    (out / "config.json").write_text("{}")
    assert trained_model(base, out) == (out, None)  # full: the fine-tuned model itself
    assert processor_dir(out, base) == base
    (out / "processor_config.json").write_text("{}")
    assert processor_dir(out, base) == out
    assert trained_model(base, None) == (base, None)  # the untrained base model
