"""Snakemake wrapper: a fine-tuned run's predictions for one eval set (backend from config)."""

import os

# GPU nodes have no network: models are read from local folders only (downloads happen on the
# submit host, rule download_model).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

import polars as pl

from geolocsft.sft.predict import (
    TransformersPredictor,
    VLLMPredictor,
    predict,
    predict_settings,
    vllm_settings,
)
from geolocsft.splits import evaluation_targets
from geolocsft.workflow import run_script


def main(smk) -> None:
    run = smk.params.settings
    name = smk.wildcards.run
    settings = predict_settings(
        run,
        smk.params.dataset_settings,
        instruction=Path(smk.input.instruction).read_text(encoding="utf-8"),
        name=name,
    )
    model, adapter = Path(smk.input.model), Path(smk.input.adapter)
    if run["predict"]["backend"] == "vllm":
        engine = vllm_settings(run, name)
        predictor = VLLMPredictor(model, adapter, settings, engine, run_name=name)
    else:
        predictor = TransformersPredictor(model, adapter, settings)
    targets = evaluation_targets(pl.read_parquet(smk.input.targets))
    predict(predictor, targets).write_csv(smk.output[0])


run_script(snakemake, main)
