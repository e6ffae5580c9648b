"""Snakemake wrapper: the training images that are eval images (see geolocsft.leakage)."""

from pathlib import Path

from geolocsft.leakage import (
    LeakageSettings,
    find_leaks,
    read_leakage_columns,
    summary,
    write_report,
)
from geolocsft.settings import from_config
from geolocsft.workflow import run_script


def main(smk) -> None:
    corpus = read_leakage_columns(smk.input.corpus)
    benchmarks = {
        name: read_leakage_columns(path)
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
