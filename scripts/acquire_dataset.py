"""Snakemake wrapper: fetch a dataset repo from the Hugging Face Hub and unpack it for ingest
(submit host only; see geolocsft.hub.acquire)."""

from pathlib import Path

from geolocsft.hub.acquire import DEFAULT_CACHE, RetryPolicy, acquire_dataset
from geolocsft.workflow import run_script


def main(smk) -> None:
    # The cache and the retry policy change how, not what, is fetched: they are read from the
    # config here rather than passed as params (a changed param would rerun the job).
    settings = smk.config.get("acquire", {})
    acquire_dataset(
        smk.params.settings,
        Path(settings.get("cache") or DEFAULT_CACHE),
        images_dir=Path(smk.output.images),
        metadata_csv=Path(smk.output.metadata),
        source_json=Path(smk.output.source),
        on_bad_input=smk.params.on_bad_input,
        retry=RetryPolicy(
            max_attempts=settings.get("max_attempts", 5), backoff_s=settings.get("backoff_s", 2.0)
        ),
    )


run_script(snakemake, main)
