"""Snakemake wrapper: score one predictor on one eval set (see geolocsft.evaluate)."""

from pathlib import Path

from geolocsft.evaluate import EvaluationSettings, evaluate_file
from geolocsft.workflow import run_script


def main(smk) -> None:
    settings = smk.params.settings
    evaluate_file(
        Path(smk.input.predictions),
        Path(smk.params.out_dir),
        manifest_path=Path(smk.input.manifest),
        settings=EvaluationSettings(
            thresholds_km=tuple(float(t) for t in settings["thresholds_km"]),
            distance=settings["distance"],
            earth_radius_km=settings["earth_radius_km"],
            bootstrap_resamples=settings["bootstrap_resamples"],
            confidence=settings["confidence"],
            seed=settings["seed"],
        ),
        make_plots=True,
        label=f"{smk.wildcards.predictor} on {smk.wildcards.evalset}",
    )


run_script(snakemake, main)
