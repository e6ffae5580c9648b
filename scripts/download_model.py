"""Snakemake wrapper: download a base model from the Hugging Face Hub (submit host only)."""

from pathlib import Path

from geolocsft.sft.models import DEFAULT_HUB_CACHE, download_model
from geolocsft.workflow import run_script


def main(smk) -> None:
    cache = smk.config.get("acquire", {}).get("cache") or DEFAULT_HUB_CACHE
    download_model(smk.params.repo_id, smk.params.revision, Path(smk.output.model), Path(cache))


run_script(snakemake, main)
