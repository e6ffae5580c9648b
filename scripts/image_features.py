"""Snakemake wrapper: kNN-baseline image features of one dataset's manifest."""

import polars as pl

from geolocsft.baselines import FeatureSettings, compute_features
from geolocsft.settings import from_config
from geolocsft.workflow import run_script


def main(smk) -> None:
    manifest = pl.read_parquet(smk.input.manifest)
    features = compute_features(manifest, from_config(FeatureSettings, smk.params.settings))
    features.write_parquet(smk.output.features)


run_script(snakemake, main)
