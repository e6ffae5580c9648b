"""Valid geo-captions → one LLaMA-Factory dataset (ShareGPT format) with its media folder.

Layout of ``results/sft/<name>/``::

    <name>.json          [{"conversations": [{"role": "user", "content": "<image>..."},
                                             {"role": "assistant", "content": "{...}"}],
                           "images": ["media/<image_id>.jpg"]}, ...]
    <name>_val.json      the validation samples (only with a validation fraction > 0)
    dataset_info.json    LLaMA-Factory's registry: formatting sharegpt, columns, tags
    media/               every image as 8-bit RGB JPEG, upright, resized to the configured size
    stats.json           samples, skipped images by reason, target lengths

Image paths are relative to the dataset folder, which LLaMA-Factory uses as ``dataset_dir``
(and ``media_dir``). The build is deterministic: the same captions and images give the same
bytes, so a dataset can be audited and re-made from the response store.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from tqdm import tqdm

from geolocsft.captions.documents import find_caption_file, read_caption
from geolocsft.errors import GeolocsftError
from geolocsft.images import ImagePreparation, prepared_jpeg
from geolocsft.io import atomic_write_bytes, atomic_write_json
from geolocsft.splits import in_fraction

log = logging.getLogger(__name__)

Target = Literal["full", "answer", "coordinates"]
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class DatasetSettings:
    """One entry of ``sft.datasets`` in config."""

    CONFIG_SECTION: ClassVar[str] = "sft.datasets.*"

    name: str = field(metadata={"key": None})
    target: Target
    include_flagged: bool
    validation_fraction: float
    image_max_side: int
    image_max_pixels: int
    jpeg_quality: int
    split_salt: str


def assistant_text(caption_document: dict[str, Any], target: Target) -> str:
    """The assistant turn: the caption (``full``), its answer, or only the coordinates."""
    caption = caption_document["caption"]
    if target == "full":
        if caption.get("thinking") is None:
            raise GeolocsftError(
                f"{caption_document['image_id']}: the caption has no reasoning (answer-only "
                "'metadata' backend): use target 'answer' or 'coordinates' for this dataset"
            )
        value: dict[str, Any] = {"thinking": caption["thinking"], "answer": caption["answer"]}
    elif target == "answer":
        value = {"answer": caption["answer"]}
    else:
        coordinates = caption["answer"]["coordinates"]
        value = {"latitude": coordinates["latitude"], "longitude": coordinates["longitude"]}
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def media_name(image_id: str) -> str:
    return f"{image_id}.jpg"


def image_preparation(settings: DatasetSettings) -> ImagePreparation:
    """How the dataset's photos are prepared: also what prediction applies (same pixels)."""
    return ImagePreparation(
        max_side=settings.image_max_side,
        max_pixels=settings.image_max_pixels,
        jpeg_quality=settings.jpeg_quality,
    )


def write_media_image(source: Path, destination: Path, settings: DatasetSettings) -> None:
    """The image as the model will see it: upright 8-bit RGB JPEG within the size limits."""
    atomic_write_bytes(destination, prepared_jpeg(source, image_preparation(settings)), fsync=False)


def dataset_info(name: str, with_validation: bool) -> dict[str, Any]:
    """LLaMA-Factory's ``dataset_info.json`` entries for the dataset (and its validation part)."""

    def entry(file_name: str) -> dict[str, Any]:
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }

    info = {name: entry(f"{name}.json")}
    if with_validation:
        info[f"{name}_val"] = entry(f"{name}_val.json")
    return info


def build_dataset(
    manifest: pl.DataFrame,
    caption_index: pl.DataFrame,
    captions_dir: Path,
    instruction: str,
    settings: DatasetSettings,
    out_dir: Path,
) -> dict[str, Any]:
    """Write the dataset files into ``out_dir``; return the statistics (also in stats.json)."""
    skipped: Counter[str] = Counter()
    skipped_examples: dict[str, list[str]] = {}

    def skip(reason: str, image_id: str) -> None:
        skipped[reason] += 1
        skipped_examples.setdefault(reason, [])
        if len(skipped_examples[reason]) < 10:
            skipped_examples[reason].append(image_id)

    paths = dict(zip(manifest["image_id"], manifest["path"], strict=True))
    samples: list[tuple[str, dict[str, Any], bool]] = []
    for row in caption_index.sort("image_id").iter_rows(named=True):
        image_id = row["image_id"]
        if row["status"] != "captioned":
            skip(f"caption_{row['failure_reason'] or 'failed'}", image_id)
            continue
        if row["flagged"] and not settings.include_flagged:
            skip("flagged_caption", image_id)
            continue
        if image_id not in paths:
            skip("not_in_manifest", image_id)
            continue
        document = read_caption(find_caption_file(captions_dir, image_id))
        sample = {
            "conversations": [
                {"role": "user", "content": f"{IMAGE_TOKEN}{instruction.strip()}"},
                {"role": "assistant", "content": assistant_text(document, settings.target)},
            ],
            "images": [f"media/{media_name(image_id)}"],
        }
        held_out = in_fraction(image_id, settings.validation_fraction, settings.split_salt)
        samples.append((image_id, sample, held_out))
    if not samples:
        raise GeolocsftError(
            f"sft dataset {settings.name}: no usable caption (skipped: {dict(skipped)})"
        )

    media_dir = out_dir / "media"
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = [
            pool.submit(
                write_media_image,
                Path(paths[image_id]),
                media_dir / media_name(image_id),
                settings,
            )
            for image_id, _, _ in samples
        ]
        for job in tqdm(jobs, desc="dataset images", unit="img", mininterval=2.0, disable=None):
            job.result()

    train = [s for _, s, v in samples if not v]
    validation = [s for _, s, v in samples if v]
    if not train:
        raise GeolocsftError(f"sft dataset {settings.name}: every sample fell into validation")
    _write_json(out_dir / f"{settings.name}.json", train)
    if settings.validation_fraction > 0:
        _write_json(out_dir / f"{settings.name}_val.json", validation)
    _write_json(
        out_dir / "dataset_info.json", dataset_info(settings.name, settings.validation_fraction > 0)
    )
    lengths = np.array([len(s["conversations"][1]["content"]) for _, s, _ in samples])
    stats = {
        "dataset": settings.name,
        "target": settings.target,
        "samples": len(samples),
        "train": len(train),
        "validation": len(validation),
        "skipped": dict(skipped.most_common()),
        "skipped_examples": skipped_examples,
        "target_chars": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
        },
    }
    _write_json(out_dir / "stats.json", stats)
    log.info("sft dataset %s: %s", settings.name, json.dumps(stats, sort_keys=True))
    return stats


def _write_json(path: Path, value: Any) -> None:
    atomic_write_json(path, value, indent=1, sort_keys=False, fsync=False)
