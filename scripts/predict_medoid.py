"""Snakemake wrapper: the training-medoid baseline's predictions for one eval set."""

import polars as pl

from geolocsft.baselines import predict_medoid, training_set
from geolocsft.splits import evaluation_targets
from geolocsft.workflow import run_script


def main(smk) -> None:
    train = training_set(pl.read_parquet(smk.input.corpus))
    targets = evaluation_targets(pl.read_parquet(smk.input.targets))
    predict_medoid(train, targets, seed=smk.params.seed).write_csv(smk.output.predictions)


run_script(snakemake, main)
