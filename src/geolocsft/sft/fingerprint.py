"""A training run's identity: a fingerprint of everything that shapes its weights.

The fingerprint is the sha256 of one record (:func:`fingerprint_record`):

* the rendered LLaMA-Factory YAML minus what does not shape the weights (where the checkpoints
  go, whether to resume, logging, the number of data workers) and minus paths, which are
  replaced by what they point to:
* the dataset's content: the sha256 of its JSON files and of every media file (from the media
  index sft_dataset writes; the memo's blob names are these hashes);
* the base model: the Hub repo and the commit it resolved to (``geolocsft_source.json``, written
  by download_model), or for a local folder (the tiny models, a user's own) the sha256 of each
  of its files;
* the DeepSpeed config's content, the launch (processes per node, nodes, CPU or GPU), the
  training code version and the versions of the packages that train.

Checkpoints live in ``results/train/<run>/checkpoints/`` beside ``fingerprint.json``.
:func:`checkpoint_to_resume` resumes only checkpoints whose folder carries the same fingerprint
(a killed run resumes from its newest complete checkpoint); a folder made by any other
configuration is moved aside to ``checkpoints.stale-<its fingerprint>/`` with a log line naming
what changed, so a retrain always starts from step 0 and nothing paid for is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from geolocsft.audit import package_versions
from geolocsft.errors import GeolocsftError
from geolocsft.io import atomic_write_json, canonical_sha256, file_sha256

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
#: Version of the record's layout: a change starts every run afresh.
RECORD_VERSION = 1
#: Keys of the rendered YAML that do not shape the weights (paths are replaced by content).
NEUTRAL_KEYS = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "overwrite_cache",
        "logging_steps",
        "plot_loss",
        "report_to",
        "save_steps",
        "save_total_limit",
        "eval_steps",
        "eval_strategy",
        "per_device_eval_batch_size",
        "preprocessing_num_workers",
        "dataloader_num_workers",
        "ddp_timeout",
    }
)
PATH_KEYS = frozenset({"model_name_or_path", "dataset_dir", "media_dir", "deepspeed"})
#: Packages whose version shapes what training computes.
TRAINING_PACKAGES = (
    "llamafactory",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "torch",
    "deepspeed",
)
MODEL_SOURCE_FILE = "geolocsft_source.json"


def model_identity(model_dir: Path) -> dict[str, Any]:
    """A base model's identity: Hub repo + resolved commit, or the hash of a local folder."""
    source = model_dir / MODEL_SOURCE_FILE
    if source.is_file():
        record = json.loads(source.read_text(encoding="utf-8"))
        return {"repo_id": record["repo_id"], "commit": record["commit"]}
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    if not files:
        raise GeolocsftError(f"{model_dir}: the model folder holds no files")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(model_dir).as_posix()}\0{file_sha256(path)}\0".encode())
    return {"local_files_sha256": digest.hexdigest(), "files": len(files)}


def dataset_identity(dataset_dir: Path, dataset: str) -> dict[str, Any]:
    """A dataset's content: its JSON files and the sha256 of every media file it uses."""
    files = {}
    for name in (f"{dataset}.json", f"{dataset}_val.json", "dataset_info.json"):
        path = dataset_dir / name
        if path.is_file():
            files[name] = file_sha256(path)
    if f"{dataset}.json" not in files:
        raise GeolocsftError(f"{dataset_dir}: no {dataset}.json (the dataset is not built)")
    index = dataset_dir / "media_sha256.parquet"
    if index.is_file():
        table = pl.read_parquet(index).sort("path")
        media = list(zip(table["path"], table["sha256"], strict=True))
    else:  # a dataset made elsewhere: hash its media files
        media = [
            (p.relative_to(dataset_dir).as_posix(), file_sha256(p))
            for p in sorted((dataset_dir / "media").rglob("*"))
            if p.is_file()
        ]
    return {"files": files, "media": canonical_sha256(media), "media_files": len(media)}


def fingerprint_record(
    config: Mapping[str, Any],
    *,
    model_dir: Path,
    dataset_dir: Path,
    launch: Mapping[str, Any],
    code: str,
) -> dict[str, Any]:
    """Everything that shapes a run's weights (see the module docstring)."""
    shaping = {k: v for k, v in config.items() if k not in NEUTRAL_KEYS | PATH_KEYS}
    deepspeed = config.get("deepspeed")
    return {
        "record_version": RECORD_VERSION,
        "llamafactory_config": shaping,
        "dataset": dataset_identity(dataset_dir, str(config["dataset"])),
        "model": model_identity(model_dir),
        "deepspeed": file_sha256(Path(deepspeed)) if deepspeed else None,
        "launch": dict(launch),
        "code": code,
        "packages": package_versions(TRAINING_PACKAGES),
    }


def fingerprint_of(record: Mapping[str, Any]) -> str:
    return canonical_sha256(record)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The keys whose values differ between two records (dotted, nested)."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The run's checkpoints that were written to the end (trainer_state.json is written last),
    oldest first."""
    found = [(step, p) for p in output_dir.glob("checkpoint-*") if (step := checkpoint_step(p))]
    return [p for _, p in sorted(found) if (p / "trainer_state.json").is_file()]


def read_record(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / FINGERPRINT_FILE
    try:
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    loaded.pop("fingerprint", None)
    return loaded


def checkpoint_to_resume(output_dir: Path, record: Mapping[str, Any], run: str) -> Path | None:
    """The newest complete checkpoint of a run with this fingerprint, or None (train from 0).

    Checkpoints of another fingerprint are moved aside (``checkpoints.stale-<fingerprint>``),
    incomplete ones (killed while being written) are removed; both with a log line. Afterwards
    ``output_dir`` holds this run's ``fingerprint.json``.
    """
    fingerprint = fingerprint_of(record)
    if output_dir.is_dir() and any(output_dir.iterdir()):
        old = read_record(output_dir)
        old_fingerprint = fingerprint_of(old) if old else None
        if old_fingerprint != fingerprint:
            label = old_fingerprint[:16] if old_fingerprint else "unknown"
            aside = output_dir.with_name(f"{output_dir.name}.stale-{label}")
            if aside.exists():
                shutil.rmtree(aside)
            output_dir.rename(aside)
            why = (
                "changed: " + ", ".join(differences(old, record))
                if old
                else f"no {FINGERPRINT_FILE}"
            )
            log.info(
                "run %s: the checkpoints in %s were made by another configuration (%s); moved "
                "aside to %s; training starts from step 0 (fingerprint %s)",
                run,
                output_dir,
                why,
                aside,
                fingerprint[:16],
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output_dir / FINGERPRINT_FILE, {**record, "fingerprint": fingerprint})
    complete = complete_checkpoints(output_dir)
    for path in output_dir.glob("checkpoint-*"):
        if checkpoint_step(path) is not None and path not in complete:
            log.info("run %s: removing the incomplete checkpoint %s", run, path)
            shutil.rmtree(path)
    if complete:
        log.info(
            "run %s: resuming from %s (same fingerprint %s)", run, complete[-1], fingerprint[:16]
        )
        return complete[-1]
    return None


def stamp(output_dir: Path, destinations: list[Path]) -> None:
    """Copy the run's fingerprint.json into each checkpoint and the adapter folder."""
    source = output_dir / FINGERPRINT_FILE
    for destination in destinations:
        shutil.copy2(source, destination / FINGERPRINT_FILE)
