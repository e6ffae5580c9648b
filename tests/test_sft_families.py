"""Both model families of the paper through the workflow: the tiny Gemma 3-style model is built
locally, fine-tuned with LLaMA-Factory's gemma3 template (taken from its config.json), and
answers with Gemma's own end-of-turn token (taken from its generation config)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from conftest import REPO
from test_workflow import copy_workflow, snakemake

from geolocsft.sft.model_family import stop_token_ids
from geolocsft.sft.predict import TransformersPredictor, predict, predict_settings
from geolocsft.splits import evaluation_targets

pytestmark = pytest.mark.workflow

RUN = "tiny-gemma3-demo"


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory: pytest.TempPathFactory):
    """The demo with its run on the tiny Gemma 3 model instead of the Qwen one."""
    workdir = copy_workflow(tmp_path_factory.mktemp("gemma"))
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    run = config["sft"]["runs"].pop("tiny-demo")
    config["sft"]["runs"][RUN] = {**run, "model": "tiny-gemma3", "template": None}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(workdir, f"results/eval/{RUN}/holdout/accuracy.json")
    return workdir, config


def test_tiny_gemma3_trains_with_its_own_template_and_answers_in_format(gemma_run):
    workdir, _ = gemma_run
    model = workdir / "results" / "models" / "tiny-gemma3"
    assert json.loads((model / "config.json").read_text())["architectures"] == [
        "Gemma3ForConditionalGeneration"
    ]
    rendered = yaml.safe_load(
        (workdir / "results/train" / RUN / "llamafactory_train.yaml").read_text()
    )
    assert rendered["template"] == "gemma3"  # from model_type, not from a constant
    predictions = pl.read_csv(workdir / "results" / "predictions" / RUN / "holdout.csv")
    parsed = predictions["pred_lat"].is_not_null().mean()
    assert parsed >= 0.9, predictions.select("raw_answer", "parse_status")


def test_gemma_stops_at_its_end_of_turn_and_untrained_it_cannot_answer(gemma_run):
    workdir, config = gemma_run
    model = workdir / "results" / "models" / "tiny-gemma3"
    instruction = (REPO / "config" / "prompts" / "instruction-answer-v1.txt").read_text()
    run = config["sft"]["runs"][RUN]
    settings = predict_settings(run, config["sft"]["datasets"][run["dataset"]], instruction)
    targets = evaluation_targets(pl.read_parquet(workdir / "results" / "manifest.parquet"))
    targets = targets.with_columns(
        pl.format("{}/{}", pl.lit(str(workdir)), pl.col("path")).alias("path")
    )
    trained = TransformersPredictor(model, workdir / "results/train" / RUN / "adapter", settings)
    tokenizer = trained.processor.tokenizer
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert trained.stop_ids == stop_token_ids(model, tokenizer)
    assert end_of_turn in trained.stop_ids and tokenizer.eos_token != "<end_of_turn>"
    answers = predict(trained, targets, progress=False)
    for raw in answers["raw_answer"]:
        # The answer ended at <end_of_turn>, well before max_new_tokens.
        assert len(tokenizer.encode(raw, add_special_tokens=False)) < settings.max_new_tokens
    untrained = predict(TransformersPredictor(model, None, settings), targets, progress=False)
    assert untrained["pred_lat"].is_not_null().mean() <= 0.3
