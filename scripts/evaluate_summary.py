"""Snakemake wrapper: one comparison table of every predictor on every eval set."""

from pathlib import Path

from geolocsft.evaluate import write_summary
from geolocsft.workflow import run_script


def main(smk) -> None:
    entries = [
        (entry["predictor"], entry["evalset"], Path(path))
        for entry, path in zip(smk.params.entries, smk.input, strict=True)
    ]
    write_summary(entries, Path(smk.output.csv), Path(smk.output.md))


run_script(snakemake, main)
