"""Zero-shot API predictors: the real google-genai client against the loopback stand-in."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import REPO, write_photo

from geolocsft.captions.documents import caption_file
from geolocsft.errors import GeolocsftError
from geolocsft.testing.standin import Standin, StandinState
from geolocsft.zeroshot import load_zero_shot_prompt, predict_zero_shot, predictor_settings

PROMPT = REPO / "config" / "prompts" / "zeroshot-v1.txt"


def captions_defaults(**changes: object) -> dict:
    """The `captions` block as the validated config has it (schema defaults filled in)."""
    from snakemake.utils import validate

    config: dict = {"captions": changes}
    validate(config, str(REPO / "config" / "schema" / "config.schema.yaml"))
    return config["captions"]


def targets(folder: Path, count: int) -> pl.DataFrame:
    rows = []
    for i in range(count):
        path = write_photo(folder / f"img{i}.jpg", seed=i)
        rows.append(
            {
                "image_id": f"img{i}",
                "path": str(path),
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "lat": 48.0 + i,
                "lon": 2.0 + i,
            }
        )
    return pl.DataFrame(rows)


def test_prompt_with_the_answer_in_it_is_refused(tmp_path):
    leaky = tmp_path / "leaky-v1.txt"
    leaky.write_text("Taken at ${latitude}, ${longitude}. Where is it?")
    with pytest.raises(GeolocsftError, match=r"leaky-v1.txt.*\$\{latitude\}.*answer"):
        load_zero_shot_prompt(leaky)
    assert load_zero_shot_prompt(PROMPT).version == "zeroshot-v1"


def test_predictor_inherits_captions_settings_and_overrides_its_own():
    captions = captions_defaults(concurrency=4, openai={"api_key_env": "MY_KEY"})
    settings = predictor_settings(
        captions,
        {
            "backend": "openai",
            "model": "Qwen/Qwen2.5-VL-7B-Instruct",
            "openai": {"base_url": "http://gpu-node:8000/v1"},
            "concurrency": None,
        },
    )
    assert settings["backend"] == "openai" and settings["concurrency"] == 4
    assert settings["openai"] == {
        "base_url": "http://gpu-node:8000/v1",
        "api_key_env": "MY_KEY",
        "json_schema": True,
    }
    with pytest.raises(GeolocsftError, match="true coordinates"):
        predictor_settings(captions, {"backend": "metadata", "model": "x"})


def test_zero_shot_answers_every_image_keeps_failures_and_never_pays_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-zero-shot-test")
    images = targets(tmp_path / "images", 3)
    # One request at a time, so the scripted faults hit the first two requests in order.
    state = StandinState(fault_script=["malformed", "blocked"])
    with Standin(state) as standin:
        settings = predictor_settings(
            captions_defaults(store=str(tmp_path / "store"), max_attempts=1),
            {
                "backend": "gemini",
                "model": "gemini-2.5-flash",
                "concurrency": 1,
                "gemini": {"base_url": standin.url},
            },
        )
        table, summary = predict_zero_shot(
            images, PROMPT, settings, tmp_path / "answers", progress=False
        )
        assert state.requests == 3
        # Both failures are permanent (a block; an invalid answer at max_attempts): not bought
        # again, and still rows with what could be read from the stored answer.
        again, _ = predict_zero_shot(images, PROMPT, settings, tmp_path / "again", progress=False)
        assert state.requests == 3
        assert again.equals(table)
        retried, _ = predict_zero_shot(
            images, PROMPT, {**settings, "retry_failed": True}, tmp_path / "retry", progress=False
        )
        assert state.requests == 3 + 2  # asked for: only the two failed images
    assert table["image_id"].to_list() == ["img0", "img1", "img2"]
    assert summary["captioned"] == 1 and summary["permanent_failures"] == 2
    by_status = {row["parse_status"]: row for row in table.iter_rows(named=True)}
    valid = by_status["caption_json"]
    # The stand-in answers with the coordinates it finds in the prompt, else (0, 0): the
    # zero-shot prompt told it nothing.
    assert (valid["pred_lat"], valid["pred_lon"]) == (0.0, 0.0)
    assert retried.filter(pl.col("parse_status") == "caption_json").height == 3
    assert json.loads(valid["raw_answer"])["answer"]["coordinates"]["latitude"] == 0.0
    assert caption_file(tmp_path / "answers", valid["image_id"]).exists()  # sharded
    malformed = next(r for s, r in by_status.items() if s.startswith("invalid_malformed_json"))
    assert malformed["raw_answer"] and malformed["pred_lat"] == 0.0  # parsed leniently
    blocked = next(r for s, r in by_status.items() if s.startswith("invalid_blocked"))
    assert blocked["pred_lat"] is None and blocked["parse_status"].endswith("unparseable")


@pytest.mark.workflow
def test_zero_shot_predictor_is_a_row_of_the_summary_table(tmp_path, monkeypatch):
    from test_workflow import copy_workflow, planned_jobs, snakemake

    workdir = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["sft"]["runs"] = {}  # no training: this test is about the API predictor
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-zero-shot-workflow-key")
    with Standin(StandinState()) as standin:
        config["zero_shot"] = {
            "predictors": {
                "gemini-zeroshot": {
                    "backend": "gemini",
                    "model": "gemini-2.5-flash",
                    "gemini": {"base_url": standin.url},
                }
            }
        }
        # The copy's own config file (a --configfile would be merged into it, keeping the run).
        path = workdir / "config" / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        assert planned_jobs(workdir, "--configfile", str(path))["predict_zero_shot"] == 1
        snakemake(workdir, "--configfile", str(path))
        asked = standin.state.requests
    holdout = pl.read_parquet(workdir / "results" / "manifest.parquet").filter(
        pl.col("split") == "test"
    )
    assert asked == holdout.height
    predictions = pl.read_csv(
        workdir / "results" / "predictions" / "gemini-zeroshot" / "holdout.csv"
    )
    assert sorted(predictions["image_id"]) == sorted(holdout["image_id"])
    summary = pl.read_csv(workdir / "results" / "eval" / "summary.csv")
    assert summary["predictor"].to_list() == ["medoid", "knn", "gemini-zeroshot"]
    assert planned_jobs(workdir, "--configfile", str(path)) == {}
