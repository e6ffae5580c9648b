"""Snakemake wrapper: one comparison table of every predictor on every eval set, paired
comparisons with the best baseline, and the published reference rows beside ours."""

from pathlib import Path

from geolocsft.evaluate import EvaluationSettings, SummaryExtras, write_summary
from geolocsft.evaluation.references import ReferenceSettings, load_references
from geolocsft.settings import from_config
from geolocsft.workflow import run_script


def main(smk) -> None:
    entries = [
        (entry["predictor"], entry["evalset"], Path(path))
        for entry, path in zip(smk.params.entries, smk.input.accuracy, strict=True)
    ]
    references = from_config(ReferenceSettings, smk.params.settings)
    tables = list(smk.input.references)  # one file, or none when evaluate.references is null
    rows = load_references(Path(tables[0])) if tables else []
    extras = SummaryExtras(
        per_image=[Path(p) for p in smk.input.per_image],
        baselines=smk.params.baselines,
        settings=EvaluationSettings.from_mapping(smk.params.settings),
        paired_csv=Path(smk.output.paired),
        references=rows,
        reference_benchmarks=references.reference_benchmarks,
        published_csv=Path(smk.output.published),
    )
    write_summary(entries, Path(smk.output.csv), Path(smk.output.md), extras)


run_script(snakemake, main)
