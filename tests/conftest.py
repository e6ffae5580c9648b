"""Shared fixtures: real image files made on the fly, and paths of the repository."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEMO_IMAGES = REPO / "data" / "demo" / "images"


def write_photo(path: Path, seed: int = 0, size: tuple[int, int] = (96, 64)) -> Path:
    """A small, real, decodable JPEG (or any format by suffix) with random content."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut off halfway, as an interrupted download leaves it."""
    write_photo(path, seed=99, size=(200, 150))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_png_bomb(path: Path, side: int = 50_000) -> Path:
    """A PNG whose header claims side x side pixels (a decompression bomb): a few KB on disk."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    rows = zlib.compress(b"\0" * (side + 1) * 4)  # a few rows; never decoded anyway
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )
    return path


def write_16bit_tiff(path: Path) -> Path:
    """A 16-bit greyscale TIFF like scientific or scanner output (Pillow mode I;16)."""
    ramp = (np.arange(80 * 60, dtype=np.uint16).reshape(60, 80) * 13).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    return path


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (developer/CI data beside the checkout) is absent")
    return SHARED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the one-node SLURM tests last: the rest of the suite then never runs Snakemake on a
    machine whose SLURM client tools point at a controller (see .ci/slurm/stop.sh)."""
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)
