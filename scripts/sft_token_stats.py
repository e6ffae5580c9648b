"""Snakemake wrapper: token lengths of a run's dataset vs its cutoff_len (see sft.token_stats)."""

import os

# GPU nodes have no network: models are read from local folders only (downloads happen on the
# submit host, rule download_model).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
from pathlib import Path

import polars as pl

from geolocsft.sft.token_stats import plot_lengths, summarize, token_lengths
from geolocsft.workflow import run_script


def main(smk) -> None:
    name = smk.wildcards.run
    dataset_json = Path(smk.params.dataset_json)
    parts = list(smk.input.parts)
    if parts:  # counted by the part jobs
        lengths = pl.concat([pl.read_parquet(p) for p in parts]).sort("index")
    else:
        lengths = token_lengths(
            dataset_json,
            media_dir=dataset_json.parent,  # image paths are relative to the dataset folder
            model_dir=Path(smk.input.model),
            image_max_pixels=smk.params.image_max_pixels,
            memo_dir=Path(smk.params.memo_dir),
        )
    cutoff_len = smk.params.cutoff_len
    plot_lengths(lengths, cutoff_len, Path(smk.output.plot), f"run {name}")
    stats = summarize(lengths, cutoff_len, on_truncation="warn")
    stats = {"run": name, "dataset": str(dataset_json), "model": str(smk.input.model), **stats}
    Path(smk.output.stats).write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")


run_script(snakemake, main)
