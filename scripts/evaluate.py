"""Snakemake wrapper: score one predictor on one eval set (see geolocsft.evaluate)."""

from pathlib import Path

from geolocsft.evaluate import EvaluationSettings, evaluate_file
from geolocsft.workflow import run_script


def main(smk) -> None:
    evaluate_file(
        Path(smk.input.predictions),
        Path(smk.params.out_dir),
        manifest_path=Path(smk.input.manifest),
        settings=EvaluationSettings.from_mapping(smk.params.settings),
        make_plots=True,
        label=f"{smk.wildcards.predictor} on {smk.wildcards.evalset}",
    )


run_script(snakemake, main)
