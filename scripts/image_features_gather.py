"""Snakemake wrapper: the feature parts of one dataset, gathered in manifest order."""

import polars as pl

from geolocsft.features import gather_features
from geolocsft.workflow import run_script


def main(smk) -> None:
    manifest = pl.read_parquet(smk.input.manifest, columns=["image_id"])
    parts = [pl.read_parquet(path) for path in smk.input.parts]
    gather_features(manifest, parts).write_parquet(smk.output.features)


run_script(snakemake, main)
