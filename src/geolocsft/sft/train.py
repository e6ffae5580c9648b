"""LoRA (or full) SFT with LLaMA-Factory: render the exact training YAML, launch, resume, plot.

The rendered YAML is an audited artifact of the run folder; ``llamafactory-cli train`` runs on it.
On a node with several GPUs the launch goes through torchrun (``FORCE_TORCHRUN=1``,
``NPROC_PER_NODE``), with a DeepSpeed ZeRO config from ``config/deepspeed/`` when the run asks
for one; across SLURM nodes ``NNODES``, ``NODE_RANK`` and ``MASTER_ADDR`` come from the
allocation. On a machine without a GPU the same code trains on the CPU (the tests' tiny model),
and GPU-only options (DeepSpeed, bf16, flash-attn) are refused with a clear message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from geolocsft.errors import GeolocsftError
from geolocsft.settings import KEYS_READ_BY_THE_WORKFLOW, from_config

log = logging.getLogger(__name__)

DEEPSPEED_CONFIGS = {"z2": "ds_z2_config.json", "z3": "ds_z3_config.json"}
#: Keys of a run's config that the workflow uses, not the training itself.
WORKFLOW_KEYS = KEYS_READ_BY_THE_WORKFLOW["sft.runs.*"]


@dataclass(frozen=True)
class RunSettings:
    """One entry of ``sft.runs`` in config (see config/README.md)."""

    CONFIG_SECTION: ClassVar[str] = "sft.runs.*"

    name: str = field(metadata={"key": None})
    dataset: str
    model: str
    template: str
    finetuning_type: str
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_target: str
    learning_rate: float
    num_train_epochs: float
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    cutoff_len: int
    image_max_pixels: int
    bf16: bool
    seed: int
    deepspeed: str | None
    gpus: int
    nodes: int
    save_steps: int
    extra: dict[str, Any]

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> RunSettings:
        return from_config(cls, config, f"sft.runs.{name}", name=name)


def gpu_count() -> int:
    """GPUs torch can use here (0 without CUDA). Decided by torch, not CUDA_VISIBLE_DEVICES."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def render_config(
    run: RunSettings,
    *,
    model_path: Path,
    dataset_dir: Path,
    output_dir: Path,
    deepspeed_dir: Path,
    has_validation: bool,
    resume_from: Path | None,
    on_gpu: bool,
) -> dict[str, Any]:
    """The LLaMA-Factory training YAML of ``run`` as a dict (written verbatim to the run folder)."""
    if not on_gpu and (run.deepspeed or run.bf16):
        raise GeolocsftError(
            f"sft.runs.{run.name}: bf16 and DeepSpeed need a GPU and none is visible to torch "
            "here; set bf16: false and deepspeed: null for a CPU run (or run it on a GPU node "
            "with --profile profiles/slurm)"
        )
    config: dict[str, Any] = {
        "model_name_or_path": str(model_path),
        "image_max_pixels": run.image_max_pixels,
        "trust_remote_code": False,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": run.finetuning_type,
        "dataset": run.dataset,
        "dataset_dir": str(dataset_dir),
        "media_dir": str(dataset_dir),
        "template": run.template,
        "cutoff_len": run.cutoff_len,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "output_dir": str(output_dir),
        "logging_steps": 1,
        "save_steps": run.save_steps,
        "save_total_limit": 2,
        "plot_loss": False,
        "overwrite_output_dir": resume_from is None,
        "report_to": "none",
        "per_device_train_batch_size": run.per_device_train_batch_size,
        "gradient_accumulation_steps": run.gradient_accumulation_steps,
        "learning_rate": run.learning_rate,
        "num_train_epochs": run.num_train_epochs,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.0,
        "bf16": run.bf16,
        "seed": run.seed,
        "ddp_timeout": 180000000,
    }
    if run.finetuning_type == "lora":
        config |= {
            "lora_rank": run.lora_rank,
            "lora_alpha": run.lora_alpha,
            "lora_dropout": run.lora_dropout,
            "lora_target": run.lora_target,
        }
    if has_validation:
        config |= {
            "eval_dataset": f"{run.dataset}_val",
            "eval_strategy": "steps",
            "eval_steps": run.save_steps,
            "per_device_eval_batch_size": run.per_device_train_batch_size,
        }
    if run.deepspeed:
        config["deepspeed"] = str(deepspeed_dir / DEEPSPEED_CONFIGS[run.deepspeed])
    if resume_from is not None:
        config["resume_from_checkpoint"] = str(resume_from)
    return config | run.extra


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` folder a killed run left, if any."""
    found = [
        (int(m.group(1)), p)
        for p in output_dir.glob("checkpoint-*")
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    ]
    return max(found)[1] if found else None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM nodelist (``gpu[01-04],gpu07`` → ``gpu01``)."""
    try:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        if hosts:
            return hosts[0]
    except (OSError, subprocess.CalledProcessError):
        pass
    match = re.match(r"([^\[,]+)(?:\[(\d+))?", nodelist)
    return (match.group(1) + (match.group(2) or "")) if match else nodelist


def launch_environment(
    run: RunSettings, gpus_here: int, environ: Mapping[str, str]
) -> dict[str, str]:
    """Environment of ``llamafactory-cli train``: torchrun and multi-node settings, offline hub."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DISABLE_VERSION_CHECK": "0",
    }
    nodes = int(environ.get("SLURM_NNODES", run.nodes) or 1)
    processes = min(run.gpus, gpus_here) if gpus_here else 1
    if processes > 1 or nodes > 1:
        env |= {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(processes), "NNODES": str(nodes)}
        if nodes > 1:
            env["NODE_RANK"] = environ.get("SLURM_NODEID", "0")
            env["MASTER_ADDR"] = first_host(environ.get("SLURM_JOB_NODELIST", "localhost"))
            env["MASTER_PORT"] = environ.get("MASTER_PORT", "29500")
    return env


def llamafactory_cli() -> str:
    """Path of ``llamafactory-cli`` next to this Python (the venv's), or on PATH."""
    beside = Path(sys.executable).with_name("llamafactory-cli")
    found = str(beside) if beside.exists() else shutil.which("llamafactory-cli")
    if not found:
        raise GeolocsftError(
            "llamafactory-cli is not installed: pip install -c constraints.txt 'geolocsft[train]'"
        )
    return found


def train(
    run: RunSettings,
    *,
    model_path: Path,
    dataset_dir: Path,
    run_dir: Path,
    deepspeed_dir: Path,
    log_path: Path | None = None,
) -> Path:
    """Train into ``run_dir/checkpoints`` and copy the final adapter to ``run_dir/adapter``.

    A run killed before it finished resumes from its newest checkpoint on the next call.
    """
    output_dir = run_dir / "checkpoints"
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = latest_checkpoint(output_dir)
    if resume_from is not None:
        log.info("resuming %s from %s", run.name, resume_from)
    gpus_here = gpu_count()
    has_validation = (dataset_dir / f"{run.dataset}_val.json").exists()
    config = render_config(
        run,
        model_path=model_path,
        dataset_dir=dataset_dir,
        output_dir=output_dir,
        deepspeed_dir=deepspeed_dir,
        has_validation=has_validation,
        resume_from=resume_from,
        on_gpu=gpus_here > 0,
    )
    config_path = run_dir / "llamafactory_train.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, **launch_environment(run, gpus_here, os.environ)}
    command = [llamafactory_cli(), "train", str(config_path)]
    log.info("running %s (GPUs here: %d)", " ".join(command), gpus_here)
    with Path(log_path or os.devnull).open("a", encoding="utf-8") as sink:
        process = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    if process.returncode != 0:
        raise GeolocsftError(
            f"llamafactory-cli train failed with exit status {process.returncode} for run "
            f"{run.name}; its output is in {log_path} (rerun to resume from the last checkpoint)"
        )
    adapter_dir = run_dir / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    adapter_dir.mkdir(parents=True)
    for item in output_dir.iterdir():
        if item.is_file() and not item.name.startswith("training_args"):
            shutil.copy2(item, adapter_dir / item.name)
    return adapter_dir


def loss_history(trainer_state_path: Path) -> list[dict[str, float]]:
    """The training loss per logged step, from ``trainer_state.json``."""
    state = json.loads(trainer_state_path.read_text())
    return [
        {"step": float(e["step"]), "loss": float(e["loss"])}
        for e in state.get("log_history", [])
        if "loss" in e and "step" in e
    ]


def plot_loss(history: list[dict[str, float]], path: Path, title: str) -> None:
    """A PNG of training loss against step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_yscale("log")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def settings_dict(run: RunSettings) -> dict[str, Any]:
    return asdict(run)
