"""LoRA (or full) SFT with LLaMA-Factory: render the exact training YAML, resume or start
afresh by the run's fingerprint, launch, collect the result, plot.

The rendered YAML is an audited artifact of the run folder; ``llamafactory-cli train`` runs on it
(see :mod:`geolocsft.sft.launch` for one process, torchrun, DeepSpeed and multi-node launches).
Checkpoints go to ``<run_dir>/checkpoints/`` beside the run's fingerprint
(:mod:`geolocsft.sft.fingerprint`): a run resumes only checkpoints of the same fingerprint, so a
changed setting, dataset, base model or code trains from step 0, and a killed run resumes.
The result is copied to ``<run_dir>/adapter/``: the LoRA adapter, or with
``finetuning_type: full`` the whole fine-tuned model (weights, config, processor), which the
predictor loads in place of the base model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from geolocsft.errors import GeolocsftError
from geolocsft.settings import KEYS_READ_BY_THE_WORKFLOW, from_config
from geolocsft.sft.fingerprint import (
    FINGERPRINT_FILE,
    checkpoint_to_resume,
    complete_checkpoints,
    fingerprint_record,
    stamp,
)
from geolocsft.sft.launch import (
    Device,
    Launch,
    launch_training,
    plan_launch,
    running_trainings,
    write_launch,
)
from geolocsft.sft.model_family import resolve_template

log = logging.getLogger(__name__)

DEEPSPEED_CONFIGS = {"z2": "ds_z2_config.json", "z3": "ds_z3_config.json"}
#: Keys of a run's config that the workflow uses, not the training itself.
WORKFLOW_KEYS = KEYS_READ_BY_THE_WORKFLOW["sft.runs.*"]
#: Files of LLaMA-Factory's output folder that are not part of the model.
NOT_MODEL_FILES = frozenset({"training_args.bin", FINGERPRINT_FILE})


@dataclass(frozen=True)
class RunSettings:
    """One entry of ``sft.runs`` in config (see config/README.md)."""

    CONFIG_SECTION: ClassVar[str] = "sft.runs.*"

    name: str = field(metadata={"key": None})
    dataset: str
    model: str
    template: str | None
    finetuning_type: str
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    lora_target: str
    learning_rate: float
    lr_scheduler_type: str
    warmup_ratio: float
    num_train_epochs: float
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    cutoff_len: int
    image_max_pixels: int
    bf16: bool
    seed: int
    deepspeed: str | None
    device: Device
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
    template: str,
    has_validation: bool,
    resume_from: Path | None,
) -> dict[str, Any]:
    """The LLaMA-Factory training YAML of ``run`` as a dict (written verbatim to the run folder)."""
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
        "template": template,
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
        "lr_scheduler_type": run.lr_scheduler_type,
        "warmup_ratio": run.warmup_ratio,
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


def check_truncation(stats: Mapping[str, Any], on_truncation: str, run: str) -> None:
    """Stop before training when ``on_truncation`` is ``fail`` and the token-length check found
    samples longer than ``cutoff_len`` (``stats``: token_lengths.json)."""
    over = stats["over_cutoff"]
    if on_truncation == "fail" and over["count"]:
        worst = ", ".join(f"{w['sample_id']} ({w['total_tokens']} tokens)" for w in over["worst"])
        raise GeolocsftError(
            f"sft.runs.{run}: {over['count']} of {stats['samples']} samples are longer than "
            f"cutoff_len={stats['cutoff_len']} tokens and LLaMA-Factory would truncate them "
            f"({over['image_tokens_cut']} through their image tokens); the worst: {worst}. Raise "
            "cutoff_len, lower image_max_pixels or use a shorter dataset target "
            "(on_truncation: fail)"
        )


def collect_model(output_dir: Path, destination: Path) -> Path:
    """Copy the trained model (LoRA adapter, or full model) out of LLaMA-Factory's folder."""
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for item in output_dir.iterdir():
        if item.is_file() and item.name not in NOT_MODEL_FILES:
            shutil.copy2(item, destination / item.name)
    return destination


def prepare_run(
    run: RunSettings,
    *,
    model_path: Path,
    dataset_dir: Path,
    run_dir: Path,
    deepspeed_dir: Path,
    code: str,
    threads: int = 1,
) -> tuple[Launch, Path]:
    """Everything before the launch: decide the launch, resume or set old checkpoints aside by
    the fingerprint, write ``llamafactory_train.yaml`` and ``launch.json``. Returns the launch
    and the launch file the node command reads."""
    output_dir = run_dir / "checkpoints"
    config_path = run_dir / "llamafactory_train.yaml"
    launch = plan_launch(
        run.name,
        config=config_path,
        gpus=run.gpus,
        nodes=run.nodes,
        device=run.device,
        deepspeed=bool(run.deepspeed),
        bf16=run.bf16,
        gpus_here=gpu_count(),
        threads=threads,
    )
    alive = running_trainings(config_path)
    if alive:
        raise GeolocsftError(
            f"run {run.name}: a training of this run is still running (pids {alive}), e.g. "
            "workers left by a killed job; stop them (kill <pid>) before training again"
        )
    template = resolve_template(run.template, model_path, run.name)
    has_validation = (dataset_dir / f"{run.dataset}_val.json").exists()

    def rendered(resume_from: Path | None) -> dict[str, Any]:
        return render_config(
            run,
            model_path=model_path,
            dataset_dir=dataset_dir,
            output_dir=output_dir,
            deepspeed_dir=deepspeed_dir,
            template=template,
            has_validation=has_validation,
            resume_from=resume_from,
        )

    record = fingerprint_record(
        rendered(None),
        model_dir=model_path,
        dataset_dir=dataset_dir,
        launch=launch.shape(),
        code=code,
    )
    config = rendered(checkpoint_to_resume(output_dir, record, run.name))
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    launch_file = run_dir / "launch.json"
    write_launch(launch, launch_file)
    return launch, launch_file


def finish_run(run_dir: Path) -> Path:
    """After a successful training: the model in ``run_dir/adapter``, the fingerprint stamped
    into it and into every checkpoint."""
    output_dir = run_dir / "checkpoints"
    adapter_dir = collect_model(output_dir, run_dir / "adapter")
    stamp(output_dir, [*complete_checkpoints(output_dir), adapter_dir])
    return adapter_dir


def train(
    run: RunSettings,
    *,
    model_path: Path,
    dataset_dir: Path,
    run_dir: Path,
    deepspeed_dir: Path,
    code: str,
    log_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    threads: int = 1,
) -> Path:
    """Train into ``run_dir/checkpoints`` and copy the result to ``run_dir/adapter``.

    A run killed before it finished resumes from its newest checkpoint on the next call, if its
    fingerprint (everything that shapes the weights, ``code`` included) is unchanged; otherwise
    training starts from step 0 and the old checkpoints are moved aside.
    """
    launch, launch_file = prepare_run(
        run,
        model_path=model_path,
        dataset_dir=dataset_dir,
        run_dir=run_dir,
        deepspeed_dir=deepspeed_dir,
        code=code,
        threads=threads,
    )
    environ = os.environ if environ is None else environ
    returncode = launch_training(launch, launch_file, log_path, environ)
    if returncode != 0:
        raise GeolocsftError(
            f"llamafactory-cli train failed with exit status {returncode} for run {run.name}; "
            f"its output is in {log_path} (rerun to resume from the last checkpoint)"
        )
    return finish_run(run_dir)


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
