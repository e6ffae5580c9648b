"""Snakemake wrapper: kNN-baseline image features of one dataset's manifest (or of one part of
it when scale_out.parts > 1), computed only for images not yet in the memo."""

from pathlib import Path

import polars as pl

from geolocsft.features import FeatureSettings, compute_features, part_rows
from geolocsft.settings import from_config
from geolocsft.workflow import run_script


def main(smk) -> None:
    manifest = pl.read_parquet(smk.input.manifest, columns=["image_id", "path", "sha256"])
    if smk.params.parts > 1:
        manifest = part_rows(manifest, smk.params.part, smk.params.parts)
    features = compute_features(
        manifest,
        from_config(FeatureSettings, smk.params.settings),
        memo_dir=Path(smk.params.memo),
        workers=smk.threads,
    )
    features.write_parquet(smk.output.features)


run_script(snakemake, main)
