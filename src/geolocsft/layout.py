"""Where per-item files go: folders of one file per image are sharded by a hash of the id.

A folder of a million files is slow to list, back up and clean on most file systems. Per-item
outputs (caption files, dataset media, zero-shot answers) are therefore spread over 256
subfolders named by the first two hex digits of the sha256 of the image id:
``captions/3f/<image_id>.json``. The shard depends on the id alone, so an item's path never
changes when others are added.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath


def shard_of(image_id: str) -> str:
    """The subfolder of an item: two hex digits of the sha256 of its id."""
    return hashlib.sha256(image_id.encode()).hexdigest()[:2]


def part_of(key: str, parts: int) -> int:
    """The part (0 .. parts-1) of an item when a per-image stage is split into ``parts`` jobs;
    it depends on the key alone."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % parts


def item_path(folder: Path, image_id: str, suffix: str) -> Path:
    """``<folder>/<shard>/<image_id><suffix>``."""
    return folder / shard_of(image_id) / f"{image_id}{suffix}"


def item_relpath(image_id: str, suffix: str) -> str:
    """The same path relative to its folder, with ``/`` (for tables and dataset JSON)."""
    name = f"{image_id}{suffix}"
    if "/" in name:  # an id from a nested folder: its path is normalised
        return str(PurePosixPath(shard_of(image_id)) / name)
    return f"{shard_of(image_id)}/{name}"  # the same string, without pathlib (called per image)
