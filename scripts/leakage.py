"""Snakemake wrapper: the training images that are eval images (see geolocsft.leakage)."""

from pathlib import Path

import polars as pl

from geolocsft.leakage import LeakageSettings, find_leaks, summary, write_report
from geolocsft.settings import from_config
from geolocsft.workflow import run_script

#: The manifest columns the check reads (a million-row manifest holds many more).
COLUMNS = ("image_id", "sha256", "path", "split", "phash")


def read_manifest(path: str) -> pl.DataFrame:
    manifest = pl.scan_parquet(path)
    names = manifest.collect_schema().names()
    return manifest.select([c for c in COLUMNS if c in names]).collect()


def main(smk) -> None:
    corpus = read_manifest(smk.input.corpus)
    benchmarks = {
        name: read_manifest(path)
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
