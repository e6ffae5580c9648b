"""Snakemake wrapper: the image-feature kNN baseline's predictions for one eval set."""

from pathlib import Path

import polars as pl

from geolocsft.baselines import BASELINE_MANIFEST_COLUMNS, KnnSettings, predict_knn, training_set
from geolocsft.leakage import excluded_ids
from geolocsft.settings import from_config
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
    predictions = predict_knn(
        train,
        pl.scan_parquet(smk.input.corpus_features),  # read in batches: only the rows used
        targets,
        pl.scan_parquet(smk.input.target_features),
        from_config(KnnSettings, smk.params.settings),
        seed=smk.params.seed,
    )
    predictions.write_csv(smk.output.predictions)


run_script(snakemake, main)
