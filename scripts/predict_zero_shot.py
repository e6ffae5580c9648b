"""Snakemake wrapper: a zero-shot API predictor's answers for one eval set."""

import json
from pathlib import Path

import polars as pl

from geolocsft.splits import evaluation_targets
from geolocsft.workflow import run_script
from geolocsft.zeroshot import predict_zero_shot, predictor_settings


def main(smk) -> None:
    settings = predictor_settings(smk.params.captions, smk.params.settings)
    targets = evaluation_targets(pl.read_parquet(smk.input.targets))
    table, summary = predict_zero_shot(
        targets, Path(smk.input.prompt), settings, Path(smk.output.answers)
    )
    table.write_csv(smk.output.predictions)
    Path(smk.output.summary).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


run_script(snakemake, main)
