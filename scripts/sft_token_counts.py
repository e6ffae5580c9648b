"""Snakemake wrapper: token counts of one part of a run's samples (see sft.token_stats)."""

import os

# GPU nodes have no network: models are read from local folders only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path

from geolocsft.sft.token_stats import token_lengths
from geolocsft.workflow import run_script


def main(smk) -> None:
    dataset_json = Path(smk.params.dataset_json)
    lengths = token_lengths(
        dataset_json,
        media_dir=dataset_json.parent,  # image paths are relative to the dataset folder
        model_dir=Path(smk.input.model),
        image_max_pixels=smk.params.image_max_pixels,
        memo_dir=Path(smk.params.memo_dir),
        part=(int(smk.wildcards.part), int(smk.params.parts)),
    )
    lengths.write_parquet(smk.output.part)


run_script(snakemake, main)
