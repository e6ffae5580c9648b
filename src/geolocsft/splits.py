"""Deterministic, salted-hash assignment of items to a part (test split, validation set).

An item's part depends on its key and the salt alone: it never changes when other items are
added or removed, and the same keys and salt give the same parts on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import polars as pl

TRAIN = "train"
TEST = "test"


def in_fraction(key: str, fraction: float, salt: str) -> bool:
    """Whether ``key`` falls into the first ``fraction`` of the salted hash range."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()[:8]
    return int.from_bytes(digest, "big") < int(fraction * 2**64)


def assign_split(keys: Iterable[str], test_fraction: float, salt: str) -> list[str]:
    """``train``/``test`` per key (an image id, or the group an image belongs to)."""
    return [TEST if in_fraction(key, test_fraction, salt) else TRAIN for key in keys]


def evaluation_targets(manifest: pl.DataFrame) -> pl.DataFrame:
    """The images a predictor answers for: the test split (a benchmark manifest is all test)."""
    return manifest.filter(pl.col("split") == TEST)


def training_rows(manifest: pl.DataFrame) -> pl.DataFrame:
    """The train split of a manifest."""
    return manifest.filter(pl.col("split") == TRAIN)
