"""Snakemake wrapper: caption the corpus' training images (see geolocsft.captions)."""

from pathlib import Path

from geolocsft.captions.stage import run_stage
from geolocsft.workflow import run_script


def main(smk) -> None:
    run_stage(
        manifest_path=Path(smk.input.manifest),
        prompt_path=Path(smk.input.prompt),
        config=smk.params.settings,
        captions_dir=Path(smk.output.captions),
        index_path=Path(smk.output.index),
        summary_path=Path(smk.output.summary),
        memo_dir=Path(smk.params.memo),
        failures_path=Path(smk.log.failures),
    )


run_script(snakemake, main)
