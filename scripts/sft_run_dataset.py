"""Snakemake wrapper: the dataset folder a run trains on (hard links; see sft.pin)."""

from pathlib import Path

from geolocsft.sft.pin import snapshot_dataset
from geolocsft.workflow import run_script


def main(smk) -> None:
    snapshot_dataset(Path(smk.input.json).parent, Path(smk.output.snapshot), smk.params.marker)


run_script(snakemake, main)
