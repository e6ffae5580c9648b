"""Snakemake wrapper: a fine-tuned run's predictions for one eval set (backend from config)."""

import os

# GPU nodes have no network: models are read from local folders only (downloads happen on the
# submit host, rule download_model).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import polars as pl

from geolocsft.baselines import evaluation_targets
from geolocsft.errors import GeolocsftError
from geolocsft.sft.predict import (
    BACKENDS,
    PredictSettings,
    TransformersPredictor,
    VLLMPredictor,
    VLLMSettings,
    predict,
)
from geolocsft.workflow import run_script


def vllm_settings(run: dict, predict_config: dict) -> VLLMSettings:
    """Engine options: ``predict.vllm``, with null meaning 'from the run' where it can."""
    options = predict_config.get("vllm") or {}
    max_model_len = options.get("max_model_len") or (
        run.get("cutoff_len", 2048) + predict_config.get("max_new_tokens", 1024)
    )
    return VLLMSettings(
        tensor_parallel_size=options.get("tensor_parallel_size") or run.get("gpus", 1),
        gpu_memory_utilization=options.get("gpu_memory_utilization", 0.9),
        max_model_len=max_model_len,
        batch_size=options.get("batch_size", 64),
        extra=dict(options.get("extra") or {}),
    )


def main(smk) -> None:
    run = smk.params.settings
    name = smk.wildcards.run
    predict_config = run.get("predict") or {}
    settings = PredictSettings(
        instruction=Path(smk.input.instruction).read_text(encoding="utf-8"),
        image_max_pixels=run["image_max_pixels"],
        max_new_tokens=predict_config.get("max_new_tokens", 1024),
        samples=predict_config.get("samples", 1),
        temperature=predict_config.get("temperature", 0.7),
        seed=run["seed"],
    )
    backend = predict_config.get("backend", "transformers")
    model, adapter = Path(smk.input.model), Path(smk.input.adapter)
    if backend == "vllm":
        engine = vllm_settings(run, predict_config)
        predictor = VLLMPredictor(model, adapter, settings, engine, run_name=name)
    elif backend == "transformers":
        predictor = TransformersPredictor(model, adapter, settings)
    else:
        raise GeolocsftError(
            f"sft.runs.{name}.predict.backend: {backend!r} is not one of {list(BACKENDS)}"
        )
    targets = evaluation_targets(pl.read_parquet(smk.input.targets))
    predict(predictor, targets).write_csv(smk.output[0])


run_script(snakemake, main)
