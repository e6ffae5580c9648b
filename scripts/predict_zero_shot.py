"""Snakemake wrapper: a zero-shot API predictor's answers for one eval set."""

import json
from pathlib import Path

import polars as pl

from geolocsft.captions.stage import report_failures
from geolocsft.splits import evaluation_targets
from geolocsft.workflow import run_script
from geolocsft.zeroshot import predict_zero_shot, predictor_settings


def main(smk) -> None:
    settings = predictor_settings(smk.params.captions, smk.params.settings)
    targets = evaluation_targets(pl.read_parquet(smk.input.targets))
    failures = Path(smk.log.failures)
    table, summary = predict_zero_shot(
        targets,
        Path(smk.input.prompt),
        settings,
        Path(smk.output.answers),
        memo_dir=Path(smk.params.memo),
        failures_path=failures,
    )
    table.write_csv(smk.output.predictions)
    Path(smk.output.summary).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    report_failures(summary, failures)


run_script(snakemake, main)
