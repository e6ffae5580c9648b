"""The dataset folder a run trains on: ``results/train/<run>/dataset/``, hard links to the files
of ``results/sft/<dataset>/`` (no space, one link per file).

A run that retrains when its dataset changes (the default) gets the folder remade whenever the
dataset changes. A pinned run (``retrain_when_dataset_changes: false``) keeps it once it exists:
new images change the dataset but not the folder, so the run is not retrained for them, while a
change of its own settings still retrains it (on the same data). Since every run trains on its
own folder, pinning a run that already trained (even after images were added) keeps the data it
was trained on and plans no retrain. The folder is written into a temporary folder and renamed
into place, and its marker file is written last, so a killed job never leaves a folder that
looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def snapshot_dataset(dataset_dir: Path, snapshot: Path, marker: str) -> int:
    """Link every file of ``dataset_dir`` into ``snapshot`` (``marker`` last); the file count."""
    staging = snapshot.with_name(f".{snapshot.name}.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    files = sorted(p for p in dataset_dir.rglob("*") if p.is_file() and p.name != marker)
    for path in files:
        _link_or_copy(path, staging / path.relative_to(dataset_dir))
    _link_or_copy(dataset_dir / marker, staging / marker)
    if snapshot.exists():
        shutil.rmtree(snapshot)
    staging.rename(snapshot)
    log.info("pinned %d files of %s into %s", len(files) + 1, dataset_dir, snapshot)
    return len(files) + 1
