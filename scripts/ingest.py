"""Snakemake wrapper: ingest one dataset (see geolocsft.ingest)."""

import logging
from pathlib import Path

from geolocsft.image_folder import remembered_listing
from geolocsft.ingest import IngestSettings, ingest, write_outputs
from geolocsft.settings import from_config
from geolocsft.tables import ColumnMap
from geolocsft.workflow import run_script


def main(smk) -> None:
    dataset = smk.params.dataset
    config = smk.params.settings
    settings = from_config(IngestSettings, {**config, "workers": config["workers"] or smk.threads})
    memo_dir = Path(smk.config["memo"]["dir"])
    # The listing Snakemake made to decide this job was stale (one walk of the folder, not two).
    scan = remembered_listing(memo_dir, smk.params.images) if dataset["images"] else None
    if scan is not None:
        logging.getLogger("geolocsft.ingest").info(
            "image folder listing: the one Snakemake made when it planned this job (%d images)",
            scan.height,
        )
    result = ingest(
        images_dir=Path(dataset["images"]),
        metadata_table=Path(dataset["metadata"]) if dataset["metadata"] else None,
        column_map=ColumnMap(**dataset["columns"]),
        settings=settings,
        split_mode=smk.params.split_mode,
        path_base=Path.cwd(),
        encoding=dataset["encoding"],
        # The memo changes how, not what, is computed: read from the config, not a param.
        memo_dir=memo_dir,
        part_files=[Path(p) for p in smk.input.parts],
        failure_report=Path(smk.log.rejected),
        scan=scan,
    )
    write_outputs(
        result,
        Path(smk.output.manifest),
        Path(smk.output.rejected),
        Path(smk.output.summary),
        Path(smk.output.listing),
    )


run_script(snakemake, main)
