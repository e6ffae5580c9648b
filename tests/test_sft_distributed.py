"""The launches the training rule builds, run for real with llamafactory-cli on the tiny model,
on the CPU: 2 processes on one node (torchrun, gloo), DeepSpeed ZeRO-2 and ZeRO-3 with the
project's config/deepspeed/*.json (DeepSpeed's CPU accelerator), and 2 nodes as two launches of
the project's node command on 127.0.0.1 (what srun starts on each node of a SLURM job).

Each trained adapter is loaded by the predictor and answers (the format is not learnt in so few
steps; tests/test_workflow.py checks what training teaches). The first DeepSpeed run on a machine
compiles DeepSpeed's shared-memory op once (about a minute; cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO, write_photo

from geolocsft.io import file_sha256
from geolocsft.settings import configured
from geolocsft.sft.dataset import DatasetSettings, build_dataset
from geolocsft.sft.launch import node_command
from geolocsft.sft.predict import TransformersPredictor, predict, predict_settings
from geolocsft.sft.train import RunSettings, finish_run, prepare_run, train
from geolocsft.testing.standin import caption_for

pytest.importorskip("llamafactory")
pytestmark = pytest.mark.workflow

INSTRUCTION = "Where was this photo taken? Answer with one JSON object."
#: Small and quick: 8 samples, 2 per process and step, 2 epochs.
RUN = {
    "dataset": "geo",
    "model": "tiny-qwen2vl",
    "bf16": False,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1.0e-3,
    "cutoff_len": 256,
    "image_max_pixels": 12544,
    "save_steps": 100000,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geolocsft.sft.tiny_model import build

    return build(tmp_path_factory.mktemp("tiny") / "model", pretrain_steps=0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """An 8-sample coordinates dataset built by geolocsft.sft.dataset, and its images."""
    root = tmp_path_factory.mktemp("corpus")
    paths = [write_photo(root / "images" / f"p{i}.jpg", seed=i, size=(80, 60)) for i in range(8)]
    ids = [p.stem for p in paths]
    manifest = pl.DataFrame(
        {
            "image_id": ids,
            "path": [str(p) for p in paths],
            "sha256": [file_sha256(p) for p in paths],
            "lat": [10.0 + i for i in range(8)],
            "lon": [20.0 - i for i in range(8)],
            "split": ["train"] * 8,
        }
    )
    captions = root / "captions"
    captions.mkdir()
    for i, image_id in enumerate(ids):
        document = {"image_id": image_id, "caption": caption_for(10.0 + i, 20.0 - i)}
        (captions / f"{image_id}.json").write_text(json.dumps(document))
    index = pl.DataFrame(
        {
            "image_id": ids,
            "status": ["captioned"] * 8,
            "flagged": [False] * 8,
            "failure_reason": [None] * 8,
        }
    )
    settings = configured(DatasetSettings, name="geo", target="coordinates")
    out = root / "geo"
    build_dataset(manifest, index, captions, INSTRUCTION, settings, out, memo_dir=root / "memo")
    return out, manifest


def run_settings(name: str, **changes: object) -> RunSettings:
    return RunSettings.from_config(name, {**RUN, **changes})


def answers_with(adapter: Path, tiny_model: Path, manifest: pl.DataFrame) -> pl.DataFrame:
    settings = predict_settings(
        {**RUN, "predict": {"max_new_tokens": 24}}, {"target": "coordinates"}, INSTRUCTION
    )
    predictor = TransformersPredictor(tiny_model, adapter, settings)
    n_lora = sum(1 for name, _ in predictor.model.named_parameters() if "lora_" in name)
    assert n_lora > 0  # the adapter really was applied
    return predict(predictor, manifest.head(2), progress=False)


def train_run(run: RunSettings, tiny_model: Path, corpus, tmp_path: Path) -> tuple[Path, str]:
    dataset, _ = corpus
    log = tmp_path / "train.log"
    adapter = train(
        run,
        model_path=tiny_model,
        dataset_dir=dataset,
        run_dir=tmp_path / run.name,
        deepspeed_dir=REPO / "config" / "deepspeed",
        code="test",
        log_path=log,
        threads=2,
    )
    return adapter, log.read_text()


def test_two_processes_on_one_node_train_and_the_adapter_predicts(tiny_model, corpus, tmp_path):
    adapter, log = train_run(run_settings("ddp", gpus=2), tiny_model, corpus, tmp_path)
    assert "Initializing 2 distributed tasks" in log
    assert "Process rank: 1, world size: 2" in log and "distributed training: True" in log
    state = json.loads((adapter / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # 8 samples / (2 processes x 2) x 2 epochs
    rows = answers_with(adapter, tiny_model, corpus[1])
    assert rows.height == 2 and rows["raw_answer"].str.len_chars().min() > 0


@pytest.mark.parametrize("stage", ["z2", "z3"])
def test_deepspeed_zero_trains_on_the_cpu_with_the_projects_configs(
    stage, tiny_model, corpus, tmp_path
):
    run = run_settings(f"ds-{stage}", gpus=2, deepspeed=stage, device="cpu")
    adapter, log = train_run(run, tiny_model, corpus, tmp_path)
    assert "world size: 2" in log
    launch = json.loads((tmp_path / run.name / "launch.json").read_text())
    assert launch["deepspeed"] and launch["torchrun"] and launch["device"] == "cpu"
    # DeepSpeed's own checkpoint layout: ZeRO-2 shards the optimizer, ZeRO-3 also the model.
    (step,) = (tmp_path / run.name / "checkpoints").glob("checkpoint-*/global_step*")
    names = {p.name for p in step.iterdir()}
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= names
    if stage == "z3":
        assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)} <= names
    else:
        assert "mp_rank_00_model_states.pt" in names
    rows = answers_with(adapter, tiny_model, corpus[1])
    assert rows.height == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_nodes_rendezvous_and_write_one_adapter(tiny_model, corpus, tmp_path):
    """Two launches of the node command on 127.0.0.1, as srun starts one per node."""
    dataset, manifest = corpus
    run = run_settings("two-nodes", nodes=2)
    run_dir = tmp_path / run.name
    launch, launch_file = prepare_run(
        run,
        model_path=tiny_model,
        dataset_dir=dataset,
        run_dir=run_dir,
        deepspeed_dir=REPO / "config" / "deepspeed",
        code="test",
    )
    assert launch.nodes == 2 and launch.processes_per_node == 1 and launch.torchrun
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    nodes = []
    for rank in (0, 1):
        node_env = {**env, "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        log = (tmp_path / f"node{rank}.log").open("w")
        nodes.append(
            (
                subprocess.Popen(
                    node_command(launch_file),
                    env=node_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    for rank, (process, log) in enumerate(nodes):
        returncode = process.wait(timeout=900)
        log.close()
        assert returncode == 0, (tmp_path / f"node{rank}.log").read_text()[-3000:]
    first = (tmp_path / "node0.log").read_text()
    second = (tmp_path / "node1.log").read_text()
    assert "Multi-node training enabled: num nodes: 2, node rank: 0" in first
    assert "'NODE_RANK': '1'" in second and f"'MASTER_PORT': '{port}'" in second
    assert "world size: 2" in first
    adapter = finish_run(run_dir)
    assert (adapter / "adapter_model.safetensors").is_file()
    assert len(list((run_dir / "checkpoints").glob("checkpoint-*"))) == 1  # one adapter, one run
    rows = answers_with(adapter, tiny_model, manifest)
    assert rows.height == 2
