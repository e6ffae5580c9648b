"""Snakemake wrapper: the image-feature kNN baseline's predictions for one eval set."""

import polars as pl

from geolocsft.baselines import predict_knn, training_set
from geolocsft.splits import evaluation_targets
from geolocsft.workflow import run_script


def main(smk) -> None:
    train = training_set(pl.read_parquet(smk.input.corpus))
    targets = evaluation_targets(pl.read_parquet(smk.input.targets))
    predictions = predict_knn(
        train,
        pl.read_parquet(smk.input.corpus_features),
        targets,
        pl.read_parquet(smk.input.target_features),
        neighbors=smk.params.neighbors,
    )
    predictions.write_csv(smk.output.predictions)


run_script(snakemake, main)
