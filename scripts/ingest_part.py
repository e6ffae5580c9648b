"""Snakemake wrapper: check the images of one part of a dataset (scale_out.parts > 1; see
geolocsft.ingest_plan)."""

from pathlib import Path

from geolocsft.ingest import IngestSettings, write_part
from geolocsft.ingest_plan import check_plan, plan_dataset
from geolocsft.settings import from_config
from geolocsft.tables import ColumnMap
from geolocsft.workflow import run_script


def main(smk) -> None:
    dataset = smk.params.dataset
    config = smk.params.settings
    settings = from_config(IngestSettings, {**config, "workers": config["workers"] or smk.threads})
    plan = plan_dataset(
        Path(dataset["images"]),
        Path(dataset["metadata"]) if dataset["metadata"] else None,
        ColumnMap(**dataset["columns"]),
        encoding=dataset["encoding"],
        path_base=Path.cwd(),
    )
    checked = check_plan(
        plan,
        settings.limits,
        settings.workers,
        Path(smk.config["memo"]["dir"]),
        part=smk.params.part,
        parts=smk.params.parts,
    )
    write_part(checked, Path(smk.output.facts))


run_script(snakemake, main)
