"""Snakemake wrapper: the training images that are eval images (see geolocsft.leakage)."""

from pathlib import Path

import polars as pl

from geolocsft.leakage import LeakageSettings, find_leaks, summary, write_report
from geolocsft.settings import from_config
from geolocsft.workflow import run_script


def main(smk) -> None:
    corpus = pl.read_parquet(smk.input.corpus)
    benchmarks = {
        name: pl.read_parquet(path)
        for name, path in zip(smk.params.benchmarks, smk.input.benchmarks, strict=True)
    }
    settings = from_config(LeakageSettings, smk.params.settings)
    report = find_leaks(corpus, benchmarks, settings, memo_dir=Path(smk.params.memo))
    write_report(
        report,
        summary(report, corpus, settings),
        Path(smk.output.report),
        Path(smk.output.summary),
    )


run_script(snakemake, main)
