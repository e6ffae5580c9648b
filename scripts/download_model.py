"""Snakemake wrapper: download a base model from the Hugging Face Hub (submit host only)."""

from pathlib import Path

from geolocsft.sft.models import download_model
from geolocsft.workflow import run_script


def main(smk) -> None:
    cache = Path(smk.config["acquire"]["cache"])
    download_model(smk.params.repo_id, smk.params.revision, Path(smk.output.model), cache)


run_script(snakemake, main)
