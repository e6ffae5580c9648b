"""Snakemake wrapper: the training-medoid baseline's predictions for one eval set."""

from pathlib import Path

import polars as pl

from geolocsft.baselines import BASELINE_MANIFEST_COLUMNS, predict_medoid, training_set
from geolocsft.leakage import excluded_ids
from geolocsft.splits import evaluation_targets
from geolocsft.workflow import run_script


def main(smk) -> None:
    train = training_set(
        pl.read_parquet(smk.input.corpus, columns=BASELINE_MANIFEST_COLUMNS),
        excluded_ids(Path(smk.input.excluded)),
    )
    targets = evaluation_targets(
        pl.read_parquet(smk.input.targets, columns=BASELINE_MANIFEST_COLUMNS)
    )
    predict_medoid(train, targets, seed=smk.params.seed).write_csv(smk.output.predictions)


run_script(snakemake, main)
