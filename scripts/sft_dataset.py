"""Snakemake wrapper: one LLaMA-Factory dataset from the valid geo-captions."""

from pathlib import Path

import polars as pl

from geolocsft.leakage import excluded_ids
from geolocsft.settings import from_config
from geolocsft.sft.dataset import (
    DATASET_MANIFEST_COLUMNS,
    DatasetSettings,
    build_dataset,
    read_caption_index,
)
from geolocsft.workflow import run_script


def main(smk) -> None:
    name = smk.wildcards.sft_dataset
    settings = from_config(DatasetSettings, smk.params.settings, f"sft.datasets.{name}", name=name)
    parts = list(getattr(smk.input, "media_parts", []))
    build_dataset(
        manifest=pl.read_parquet(smk.input.manifest, columns=DATASET_MANIFEST_COLUMNS),
        caption_index=read_caption_index(smk.input.index),
        captions_dir=Path(smk.input.captions),
        instruction=Path(smk.input.instruction).read_text(encoding="utf-8"),
        settings=settings,
        out_dir=Path(smk.output.info).parent,
        memo_dir=Path(smk.params.memo_dir),
        excluded_ids=excluded_ids(Path(smk.input.excluded)),
        workers=smk.threads,
        prepared=pl.concat([pl.read_parquet(p) for p in parts]) if parts else None,
    )


run_script(snakemake, main)
