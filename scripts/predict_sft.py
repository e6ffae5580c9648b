"""Snakemake wrapper: a fine-tuned run's predictions for one eval set."""

from pathlib import Path

import polars as pl

from geolocsft.baselines import evaluation_targets
from geolocsft.sft.predict import PredictSettings, TransformersPredictor, predict
from geolocsft.workflow import run_script


def main(smk) -> None:
    run = smk.params.settings
    settings = PredictSettings(
        instruction=Path(smk.input.instruction).read_text(encoding="utf-8"),
        image_max_pixels=run["image_max_pixels"],
        max_new_tokens=run["predict"]["max_new_tokens"],
        samples=run["predict"]["samples"],
        temperature=run["predict"]["temperature"],
        seed=run["seed"],
    )
    predictor = TransformersPredictor(Path(smk.input.model), Path(smk.input.adapter), settings)
    targets = evaluation_targets(pl.read_parquet(smk.input.targets))
    predict(predictor, targets).write_csv(smk.output[0])


run_script(snakemake, main)
