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


def test_fail_policy_writes_every_problem_beside_the_log(tmp_path):
    """Snakemake deletes a failed job's outputs, so `on_bad_input: fail` lists every problem in
    logs/ingest/corpus-rejected.csv; a Windows-1252 table is read when declared."""
    workdir = copy_workflow(tmp_path / "wf", with_demo=False)
    nested_photos(workdir / "photos")
    names = sorted(p.stem for p in DEMO_IMAGES.iterdir())
    rows = [f"{name},48.85,2.35" for name in names] + [f"ghost{i},1,1" for i in range(25)]
    (workdir / "labels.csv").write_bytes(("id,lat,lon,lieu\n" + "\n".join(
        f"{row},café" for row in rows) + "\n").encode("cp1252"))  # fmt: skip
    corpus = {"images": "photos", "metadata": "labels.csv", "encoding": "cp1252"}
    config = write_config(workdir, corpus=corpus, ingest={"on_bad_input": "fail"})
    failed = snakemake(
        workdir, "--configfile", str(config), "--until", "ingest_corpus", check=False
    )
    assert failed.returncode != 0
    report = workdir / "logs" / "ingest" / "corpus-rejected.csv"
    listed = pl.read_csv(report)
    assert sorted(listed["image_id"]) == sorted(f"ghost{i}" for i in range(25))
    log = (workdir / "logs" / "ingest" / "corpus.log").read_text()
    assert "… and 5 more" in log and "All 25 are listed in logs/ingest/corpus-rejected.csv" in log
    # The job read the folder listing Snakemake made to plan it, not a second walk.
    assert "image folder listing: the one Snakemake made when it planned this job" in log
    assert not (workdir / "results" / "manifest.parquet").exists()
    # Without the declared encoding the job stops with an error naming the table, the line and
    # the encoding (the header alone, checked at parse time, is plain ASCII here).
    del corpus["encoding"]
    config = write_config(workdir, corpus=corpus)
    refused = snakemake(
        workdir, "--configfile", str(config), "--until", "ingest_corpus", check=False
    )
    assert refused.returncode != 0
    log = (workdir / "logs" / "ingest" / "corpus.log").read_text()
    assert "labels.csv: the metadata table is not valid utf-8 text: line 2" in log
    assert "Windows-1252" in log and "Traceback" not in log
