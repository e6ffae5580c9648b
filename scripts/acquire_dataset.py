"""Snakemake wrapper: fetch a dataset repo from the Hugging Face Hub and unpack it for ingest
(submit host only; see geolocsft.hub.acquire)."""

from pathlib import Path

from geolocsft.hub.acquire import acquire_dataset
from geolocsft.hub.retry import RetryPolicy
from geolocsft.settings import from_config
from geolocsft.workflow import run_script


def main(smk) -> None:
    # The cache and the retry policy change how, not what, is fetched: they are read from the
    # config here rather than passed as params (a changed param would rerun the job).
    acquire = smk.config["acquire"]
    acquire_dataset(
        smk.params.settings,
        Path(acquire["cache"]),
        images_dir=Path(smk.output.images),
        metadata_csv=Path(smk.output.metadata),
        source_json=Path(smk.output.source),
        on_bad_input=smk.params.on_bad_input,
        retry=from_config(RetryPolicy, acquire),
    )


run_script(snakemake, main)
