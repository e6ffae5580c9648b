"""Captions written by the GeoLocSFT paper's own script: imported into the response store, so no
request is paid for them, and ours written back out in the paper's format.

The paper's script writes ``<image>.json`` with the model's JSON (``image_id``, ``thinking``,
``answer``), ``<image>.txt`` when the answer was not JSON and ``<image>.error.txt`` when the
request failed; these files are made here in that layout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO
from test_captions import PROMPT, gemini, make_items, run, write_manifest

from geolocsft.captions.documents import caption_file, read_caption
from geolocsft.captions.importer import export_paper_format, import_captions
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.stage import backend_identity
from geolocsft.captions.store import ResponseStore
from geolocsft.cli import main as cli
from geolocsft.settings import with_defaults
from geolocsft.testing.standin import Standin, StandinState, caption_for

GEMINI = with_defaults("captions", {"backend": "gemini", "model": "gemini-2.5-flash"})


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "import-test-key")


def paper_file(folder: Path, image_file: str, lat: float, lon: float) -> Path:
    """``<stem>.json`` as the paper's script writes it: the model's JSON, image_id first."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(image_file).stem}.json"
    answer = {"image_id": image_file, **caption_for(lat, lon)}
    path.write_text(json.dumps(answer, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def test_paper_files_are_imported_and_the_next_run_asks_only_for_the_others(tmp_path):
    items = make_items(tmp_path / "img", 5)
    manifest = pl.read_parquet(write_manifest(items, tmp_path / "manifest.parquet"))
    paper = tmp_path / "paper"
    for item in items[:3]:
        paper_file(paper, f"{item.image_id}.jpg", item.lat, item.lon)
    bad = caption_for(1.0, 2.0)
    del bad["thinking"]["terrain_soil"]
    (paper / f"{items[3].image_id}.json").write_text(json.dumps(bad))
    (paper / f"{items[4].image_id}.txt").write_text("Sorry, here is my analysis: ...")
    (paper / f"{items[4].image_id}.error.txt").write_text("Error: 503 UNAVAILABLE")
    paper_file(paper, "not_in_the_manifest.jpg", 0.0, 0.0)
    (paper / "analysis_summary.json").write_text("{}")
    (paper / "processing_log.txt").write_text("Processing started\n")
    store = ResponseStore(tmp_path / "store")
    prompt = PromptTemplate.load(PROMPT)

    report = import_captions(paper, manifest, backend_identity(GEMINI), prompt, store)

    assert report.counts() == {"imported": 3, "rejected": 4}
    assert report.reasons() == {
        "schema_violation": 1,
        "not_json": 1,
        "request_error": 1,
        "no_manifest_row": 1,
    }
    listed = pl.read_csv(report.path)
    assert listed.height == 7 and "terrain_soil" in "".join(listed["detail"].fill_null(""))
    with Standin(StandinState()) as standin:
        index, summary = run(items, gemini(standin.url), tmp_path)
        assert standin.state.requests == 2  # items 3 and 4 only
    assert summary["imported"] == 3 and summary["new_from_api"] == 2
    imported = index.filter(pl.col("source") == "import")["image_id"].to_list()
    assert imported == [i.image_id for i in items[:3]]
    document = read_caption(caption_file(tmp_path / "captions", items[0].image_id))
    assert document["caption"] == caption_for(items[0].lat, items[0].lon)
    assert document["provenance"]["origin"] == "import"
    assert document["provenance"]["imported"]["file"].endswith(f"{items[0].image_id}.json")
    again = import_captions(paper, manifest, backend_identity(GEMINI), prompt, store)
    assert again.counts() == {"already_in_store": 3, "rejected": 4}


def test_our_captions_are_written_in_the_papers_format_and_read_back_unchanged(tmp_path):
    items = make_items(tmp_path / "img", 3)
    manifest = pl.read_parquet(write_manifest(items, tmp_path / "manifest.parquet"))
    with Standin(StandinState()) as standin:
        run(items, gemini(standin.url), tmp_path / "ours")
    names = {i.image_id: f"{i.image_id}.jpg" for i in items}
    assert export_paper_format(tmp_path / "ours" / "captions", tmp_path / "paper", names) == 3
    written = json.loads((tmp_path / "paper" / "img000.json").read_text())
    assert list(written) == ["image_id", "thinking", "answer"]
    assert written["image_id"] == "img000.jpg"
    assert "25km_analysis" in written["thinking"]
    other = with_defaults("captions", {**GEMINI, "model": "gemini-2.5-pro"})
    store = ResponseStore(tmp_path / "store2")
    prompt = PromptTemplate.load(PROMPT)
    report = import_captions(tmp_path / "paper", manifest, backend_identity(other), prompt, store)
    assert report.counts() == {"imported": 3}
    keys = dict(pl.read_csv(report.path).select("image_id", "store_key").iter_rows())
    for item in items:
        ours = read_caption(caption_file(tmp_path / "ours" / "captions", item.image_id))
        stored = store.get(keys[item.image_id])
        assert json.loads(stored["response"]["text"]) == ours["caption"]


def workdir_with_manifest(tmp_path: Path, captions: dict) -> tuple[Path, list]:
    workdir = tmp_path / "wf"
    (workdir / "config" / "prompts").mkdir(parents=True)
    (workdir / "config" / "prompts" / PROMPT.name).write_bytes(PROMPT.read_bytes())
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump({"captions": captions}))
    items = make_items(tmp_path / "img", 2)
    (workdir / "results").mkdir()
    write_manifest(items, workdir / "results" / "manifest.parquet")
    return workdir, items


def test_the_cli_imports_into_the_configured_store_and_refuses_the_metadata_backend(
    tmp_path, capsys
):
    workdir, items = workdir_with_manifest(tmp_path, {"backend": "gemini"})
    for item in items:
        paper_file(tmp_path / "paper", f"{item.image_id}.jpg", item.lat, item.lon)
    status = cli(["captions", "import", str(tmp_path / "paper"), "-d", str(workdir)])
    out = capsys.readouterr().out
    assert status == 0 and out.startswith("2 captions imported, 0 already in the store")
    assert len(list((workdir / "cache" / "geocaption-store" / "responses").rglob("*.json"))) == 2
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump({"captions": {}}))
    status = cli(["captions", "import", str(tmp_path / "paper"), "-d", str(workdir)])
    assert status == 1 and "captions.backend is metadata" in capsys.readouterr().err


@pytest.mark.workflow
def test_imported_paper_captions_cost_nothing_in_the_next_workflow_run(tmp_path, monkeypatch):
    from test_workflow import copy_workflow, snakemake, write_config

    workdir = copy_workflow(tmp_path / "wf")
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-import-workflow-key")
    with Standin(StandinState()) as standin:
        captions = {"backend": "gemini", "gemini": {"base_url": standin.url}}
        config = write_config(workdir, captions=captions)
        snakemake(workdir, "--configfile", str(config), "--until", "ingest_corpus")
        manifest = pl.read_parquet(workdir / "results" / "manifest.parquet")
        train = manifest.filter(pl.col("split") == "train").sort("image_id")
        paper = tmp_path / "paper"
        for row in train.head(3).iter_rows(named=True):
            paper_file(paper, Path(row["path"]).name, row["lat"], row["lon"])
        env_command = [sys.executable, "-m", "geolocsft.cli", "captions", "import", str(paper)]
        imported = subprocess.run(
            [*env_command, "-d", str(workdir), "--configfile", str(config.relative_to(workdir))],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")},
            check=True,
        )
        assert imported.stdout.startswith("3 captions imported")
        snakemake(workdir, "--configfile", str(config), "--until", "geocaption")
        asked = standin.state.requests
    assert asked == train.height - 3  # nothing for the imported images
    folder = workdir / "results" / "geocaptions" / "gemini-gemini-2.5-flash" / "geocaption-v1"
    index = pl.read_csv(folder / "index.csv")
    assert sorted(index.filter(pl.col("source") == "import")["image_id"]) == sorted(
        train.head(3)["image_id"]
    )
    assert (index["status"] == "captioned").all()
