"""Snakemake wrapper: prepare (memoize) the media of one part of a dataset's images."""

from pathlib import Path

import polars as pl

from geolocsft.leakage import excluded_ids
from geolocsft.settings import from_config
from geolocsft.sft.dataset import (
    DATASET_MANIFEST_COLUMNS,
    DatasetSettings,
    images_of_part,
    prepare_media,
    read_caption_index,
    select_images,
)
from geolocsft.workflow import run_script


def main(smk) -> None:
    name = smk.wildcards.sft_dataset
    settings = from_config(DatasetSettings, smk.params.settings, f"sft.datasets.{name}", name=name)
    selection = select_images(
        pl.read_parquet(smk.input.manifest, columns=DATASET_MANIFEST_COLUMNS),
        read_caption_index(smk.input.index),
        settings,
        excluded_ids(Path(smk.input.excluded)),
    )
    part, parts = int(smk.wildcards.part), int(smk.params.parts)
    images = images_of_part(selection.images, part, parts)
    prepared, _ = prepare_media(images, settings, Path(smk.params.memo_dir), workers=smk.threads)
    prepared.write_parquet(smk.output.part)


run_script(snakemake, main)
