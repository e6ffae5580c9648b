"""Prediction backends: the GPU guard, and the vllm backend's requests and batching.

vLLM cannot run without a CUDA GPU (and is not installed here: it pins its own torch), so its
tests inject a fake ``vllm`` module that records what the predictor asks of it. The prompt is
still built by the real processor of the tiny model, and ``predict`` turns the fake answers into
real prediction rows.
"""

from __future__ import annotations

import json
import socket
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
import yaml
from conftest import REPO, write_photo

from geolocsft.errors import GeolocsftError
from geolocsft.settings import configured
from geolocsft.sft import predict as predict_module
from geolocsft.sft.predict import (
    PREDICTION_SCHEMA,
    VLLMPredictor,
    VLLMSettings,
    predict,
    predict_settings,
    require_gpu,
    vllm_lora_rank,
    vllm_settings,
)

INSTRUCTION = "Where was this photo taken? Answer with latitude and longitude.\n"
ENGINE = vllm_settings({"dataset": "d"})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geolocsft.sft.tiny_model import build

    return build(tmp_path_factory.mktemp("tiny") / "model", pretrain_steps=0)


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 12, "lora_alpha": 24}))
    return folder


def no_gpu_here() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the no-GPU message cannot be checked")


def test_gpu_only_backend_is_refused_with_a_clear_message_without_a_gpu(monkeypatch):
    no_gpu_here()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(GeolocsftError) as error:
        require_gpu("vllm", "qwen-7b")
    message = str(error.value)
    assert "sft.runs.qwen-7b" in message and "'vllm'" in message
    assert f"no CUDA device is visible to torch on host {socket.gethostname()}" in message
    assert "profiles/slurm" in message and "backend: transformers" in message


def test_a_fake_slurm_gpu_does_not_count_as_a_gpu(monkeypatch):
    """SLURM (or a fake GPU resource) sets CUDA_VISIBLE_DEVICES: torch decides, not the variable."""
    no_gpu_here()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(GeolocsftError, match=r"CUDA_VISIBLE_DEVICES='0' is set, but torch"):
        require_gpu("vllm", "r")
    with pytest.raises(GeolocsftError, match="needs a GPU"):  # before vllm is even imported
        VLLMPredictor(
            Path("model"), None, predict_settings({"dataset": "d"}, {}, "x"), ENGINE, run_name="r"
        )


def test_missing_vllm_package_is_named_with_how_to_install_it(monkeypatch):
    monkeypatch.setattr(predict_module, "cuda_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(GeolocsftError, match=r"pip install vllm.*constraints\.txt"):
        VLLMPredictor(
            Path("model"), None, predict_settings({"dataset": "d"}, {}, "x"), ENGINE, run_name="r"
        )


def test_adapter_rank_is_rounded_up_to_a_rank_vllm_accepts():
    assert [vllm_lora_rank(r) for r in (1, 8, 12, 16, 17, 300, 512)] == [
        8,
        8,
        16,
        16,
        32,
        320,
        512,
    ]
    with pytest.raises(GeolocsftError, match="larger than vLLM supports"):
        vllm_lora_rank(1024)


class FakeVLLM:
    """The parts of vllm the predictor uses; answers come from a script, in request order."""

    def __init__(self, answers: Iterator[str]) -> None:
        self.answers = answers
        self.engines: list[Any] = []
        fake = self

        class LLM:
            def __init__(self, **options: Any) -> None:
                self.options = options
                self.calls: list[dict[str, Any]] = []
                fake.engines.append(self)

            def generate(
                self,
                prompts: Sequence[dict[str, Any]],
                sampling_params: Any = None,
                *,
                use_tqdm: bool = True,
                lora_request: Any = None,
            ) -> list[Any]:
                self.calls.append(
                    {"prompts": list(prompts), "params": sampling_params, "lora": lora_request}
                )
                return [
                    SimpleNamespace(
                        outputs=[
                            SimpleNamespace(text=next(fake.answers))
                            for _ in range(sampling_params.n)
                        ]
                    )
                    for _ in prompts
                ]

        class SamplingParams:
            def __init__(self, **params: Any) -> None:
                self.__dict__.update(params)

        class LoRARequest:
            def __init__(self, lora_name: str, lora_int_id: int, lora_path: str) -> None:
                self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path

        self.module = types.ModuleType("vllm")
        self.module.LLM = LLM  # type: ignore[attr-defined]
        self.module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
        self.lora = types.ModuleType("vllm.lora")
        self.request = types.ModuleType("vllm.lora.request")
        self.request.LoRARequest = LoRARequest  # type: ignore[attr-defined]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(predict_module, "cuda_available", lambda: True)
        monkeypatch.setitem(sys.modules, "vllm", self.module)
        monkeypatch.setitem(sys.modules, "vllm.lora", self.lora)
        monkeypatch.setitem(sys.modules, "vllm.lora.request", self.request)


def targets(folder: Path, n: int) -> pl.DataFrame:
    paths = [
        write_photo(folder / f"img{i}.jpg", seed=i, size=(300 + 40 * i, 200)) for i in range(n)
    ]
    return pl.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "path": [str(p) for p in paths],
            "lat": [10.0 + i for i in range(n)],
            "lon": [20.0 + i for i in range(n)],
        }
    )


def test_vllm_requests_batches_and_rows(tiny_model, adapter, tmp_path, monkeypatch):
    samples = 2
    answers = iter(
        [
            '{"latitude": 48.85, "longitude": 2.35}',
            '{"latitude": 48.86, "longitude": 2.34}',
            "I cannot tell.",  # image 1: neither answer parses
            "no idea",
            '{"latitude": -33.9, "longitude": 151.2}',  # image 2: one of two parses
            "somewhere",
            '{"latitude": 1, "longitude": 2}',
            '{"latitude": 1.5, "longitude": 2.5}',
            '{"latitude": 5, "longitude": 6}',
            '{"latitude": 5, "longitude": 6}',
        ]
    )
    fake = FakeVLLM(answers)
    fake.install(monkeypatch)
    run = {
        "dataset": "d",
        "image_max_pixels": 28 * 28 * 16,
        "seed": 7,
        "predict": {"max_new_tokens": 64, "samples": samples, "temperature": 0.8},
    }
    # a run trained on the coordinates target answers {"latitude": ..., "longitude": ...}
    settings = predict_settings(run, {"target": "coordinates"}, INSTRUCTION)
    engine = configured(
        VLLMSettings,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.5,
        max_model_len=3072,
        batch_size=2,
    )
    predictor = VLLMPredictor(tiny_model, adapter, settings, engine, run_name="tiny-demo")
    (llm,) = fake.engines
    assert llm.options["model"] == str(tiny_model)
    assert llm.options["enable_lora"] is True and llm.options["max_lora_rank"] == 16  # r=12
    assert llm.options["limit_mm_per_prompt"] == {"image": 1}
    assert llm.options["tensor_parallel_size"] == 2 and llm.options["max_model_len"] == 3072
    assert llm.options["gpu_memory_utilization"] == 0.5 and llm.options["seed"] == 7

    table = predict(predictor, targets(tmp_path / "images", 5), progress=False)

    # batching: 5 images in batches of 2 → 2 + 2 + 1, one prompt per image
    assert [len(call["prompts"]) for call in llm.calls] == [2, 2, 1]
    im_end = predictor.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for call in llm.calls:
        assert call["lora"].lora_path == str(adapter) and call["lora"].lora_int_id == 1
        params = call["params"]
        assert params.n == samples and params.max_tokens == 64 and params.seed == 7
        assert params.temperature == 0.8 and im_end in params.stop_token_ids
        for prompt in call["prompts"]:
            # the processor's chat template: system turn, image placeholder, instruction,
            # generation prompt; the image is the fitted PIL image
            assert prompt["prompt"].startswith("<|im_start|>system\n")
            assert (
                "<|vision_start|><|image_pad|><|vision_end|>" + INSTRUCTION.strip()
                in (prompt["prompt"])
            )
            assert prompt["prompt"].endswith("<|im_start|>assistant\n")
            image = prompt["multi_modal_data"]["image"]
            assert image.mode == "RGB" and image.width * image.height <= 28 * 28 * 16

    assert table.schema == pl.Schema(PREDICTION_SCHEMA)
    assert table["image_id"].to_list() == [f"img{i}" for i in range(5)]
    rows = {r["image_id"]: r for r in table.iter_rows(named=True)}
    assert rows["img0"]["parse_status"] == "medoid_of_2" and rows["img0"]["answers_parsed"] == 2
    unparseable = rows["img1"]
    assert unparseable["pred_lat"] is None and unparseable["pred_lon"] is None
    assert unparseable["parse_status"] == "unparseable" and unparseable["answers_parsed"] == 0
    assert unparseable["raw_answer"] == "I cannot tell.\n---\nno idea"
    assert unparseable["true_lat"] == 11.0
    assert (rows["img2"]["pred_lat"], rows["img2"]["pred_lon"]) == (-33.9, 151.2)
    assert rows["img2"]["answers_parsed"] == 1
    assert rows["img4"]["pred_lat"] == 5.0


def test_greedy_single_answer_and_no_adapter(tiny_model, tmp_path, monkeypatch):
    fake = FakeVLLM(iter(["lat 1 lon 2", '{"latitude": 3, "longitude": 4}']))
    fake.install(monkeypatch)
    settings = predict_settings(
        {"dataset": "d", "predict": {"max_new_tokens": 16}}, {}, INSTRUCTION
    )
    predictor = VLLMPredictor(tiny_model, None, settings, configured(VLLMSettings, batch_size=8))
    (llm,) = fake.engines
    assert "enable_lora" not in llm.options
    table = predict(predictor, targets(tmp_path / "images", 2), progress=False)
    (call,) = llm.calls
    assert call["lora"] is None
    assert call["params"].n == 1 and call["params"].temperature == 0.0
    assert table["raw_answer"].to_list() == ["lat 1 lon 2", '{"latitude": 3, "longitude": 4}']
    assert table.height == 2


def test_predict_keeps_every_row_whatever_the_batch_size(tmp_path):
    class Scripted:
        answer_format = "coordinates"

        def __init__(self, batch_size: int) -> None:
            self.batch_size = batch_size
            self.batches: list[int] = []

        def answers_batch(self, image_paths: Sequence[Path]) -> list[list[str]]:
            self.batches.append(len(image_paths))
            return [
                ["garbage"] if "img3" in str(p) else ['{"latitude": 40.0, "longitude": -3.7}']
                for p in image_paths
            ]

    frame = pl.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(7)],
            "path": [str(tmp_path / f"img{i}.jpg") for i in range(7)],
            "lat": [0.0] * 7,
            "lon": [0.0] * 7,
        }
    )
    for batch_size, expected in ((1, [1] * 7), (3, [3, 3, 1]), (64, [7])):
        predictor = Scripted(batch_size)
        table = predict(predictor, frame, progress=False)
        assert predictor.batches == expected
        assert table["image_id"].to_list() == frame["image_id"].to_list()
        assert table["pred_lat"].is_null().to_list() == [i == 3 for i in range(7)]
    empty = predict(Scripted(4), frame.head(0), progress=False)
    assert empty.height == 0 and empty.schema == pl.Schema(PREDICTION_SCHEMA)


@pytest.mark.workflow
def test_gpu_only_predictions_are_skipped_with_a_message_on_a_machine_without_gpu(tmp_path):
    """Dry runs of the real workflow: nothing here is mocked (this machine has no GPU)."""
    from test_workflow import copy_workflow, planned_jobs, snakemake

    workdir = copy_workflow(tmp_path / "wf", with_demo=False)
    run = {"dataset": "geocaptions", "model": "tiny", "template": "qwen2_vl", "bf16": False}
    vllm_run = {**run, "predict": {"backend": "vllm"}}
    config = workdir / "config" / "vllm.yaml"
    config.write_text(yaml.safe_dump({"sft": {"runs": {"tiny-vllm": vllm_run}}}))
    (workdir / "data" / "demo" / "images").mkdir(parents=True)
    for source in (REPO / "data" / "demo" / "images").iterdir():
        (workdir / "data" / "demo" / "images" / source.name).write_bytes(source.read_bytes())

    dry = snakemake(workdir, "--configfile", str(config), "--dry-run")
    assert "Skipping the predictions of run 'tiny-vllm'" in dry.stderr + dry.stdout
    assert "results/predictions/tiny-vllm/" not in dry.stdout
    # Its training still runs, beside the demo's own run.
    assert planned_jobs(workdir, "--configfile", str(config))["sft_train"] == 2

    forced = workdir / "config" / "forced.yaml"
    forced.write_text(
        yaml.safe_dump(
            {"sft": {"skip_gpu_only_without_gpu": False, "runs": {"tiny-vllm": vllm_run}}}
        )
    )
    planned = snakemake(workdir, "--configfile", str(forced), "--dry-run").stdout
    assert "results/predictions/tiny-vllm/holdout.csv" in planned
