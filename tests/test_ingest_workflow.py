"""Ingest in the real Snakemake: nested folders, the listing digest, and scale_out.parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import DEMO_IMAGES
from test_workflow import copy_workflow, planned_jobs, snakemake, write_config

from geolocsft.ingest import IngestSettings, ingest
from geolocsft.settings import configured
from geolocsft.tables import ColumnMap

pytestmark = pytest.mark.workflow


def nested_photos(folder: Path) -> None:
    for i, photo in enumerate(sorted(DEMO_IMAGES.iterdir())):
        target = folder / f"batch{i % 2}" / f"{i % 5:02d}" / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(photo, target)


def test_ingest_split_into_parts_gathers_the_same_manifest_and_reruns_one_part(tmp_path):
    workdir = copy_workflow(tmp_path / "wf", with_demo=False)
    nested_photos(workdir / "photos")
    config = write_config(
        workdir,
        corpus={"name": "nested", "images": "photos"},
        scale_out={"parts": 2},
        ingest={"test_fraction": 0.25},
    )
    until = ("--configfile", str(config), "--until", "ingest_corpus")
    assert planned_jobs(workdir, *until) == {"ingest_part": 2, "ingest_corpus": 1}
    snakemake(workdir, *until)
    manifest = pl.read_parquet(workdir / "results" / "manifest.parquet")
    direct = ingest(
        workdir / "photos",
        None,
        ColumnMap(),
        configured(IngestSettings, test_fraction=0.25),
        path_base=workdir,
    ).manifest
    assert manifest.equals(direct.with_columns(pl.col("path").str.strip_prefix(f"{workdir}/")))
    assert manifest.height == 20 and manifest["image_id"].str.starts_with("batch").all()
    parts = [
        pl.read_parquet(workdir / f"results/ingest/parts/corpus/part-{k}.parquet") for k in (0, 1)
    ]
    assert sum(p.height for p in parts) == 20 and min(p.height for p in parts) > 0
    for k in (0, 1):
        assert (workdir / f"results/audit/provenance/ingest_part/corpus/{k}.json").is_file()

    assert planned_jobs(workdir, *until) == {}
    # A photo added deep in the tree reruns the part it belongs to, and the gather.
    new = workdir / "photos" / "batch1" / "03" / "later" / "HTC_Desire_copy.jpg"
    new.parent.mkdir(parents=True)
    shutil.copy2(DEMO_IMAGES / "HTC_Desire.jpg", new)
    assert planned_jobs(workdir, *until) == {"ingest_part": 1, "ingest_corpus": 1}
    snakemake(workdir, *until)
    grown = pl.read_parquet(workdir / "results" / "manifest.parquet")
    assert "batch1__03__later__HTC_Desire_copy" in grown["image_id"].to_list()
    joined = manifest.join(grown, on="image_id", suffix="_after")
    assert (joined["split"] == joined["split_after"]).all()
    # The image files never are Snakemake inputs: the provenance record lists no image.
    record = (workdir / "results/audit/provenance/ingest_corpus/job.json").read_text()
    assert "HTC_Desire.jpg" not in record
    listing = pl.read_parquet(workdir / "results/ingest/listing.parquet")
    assert listing.height == 21 and listing["sha256"].is_not_null().all()
