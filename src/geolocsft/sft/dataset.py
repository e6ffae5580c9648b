"""Valid geo-captions → one LLaMA-Factory dataset (ShareGPT format) with its media folder.

Layout of ``results/sft/<name>/``::

    <name>.json          [{"conversations": [{"role": "user", "content": "<image>..."},
                                             {"role": "assistant", "content": "{...}"}],
                           "images": ["media/<shard>/<image_id>.jpg"]}, ...]
    <name>_val.json      the validation samples (only with a validation fraction > 0)
    dataset_info.json    LLaMA-Factory's registry: formatting sharegpt, columns, tags
    media/<shard>/       every image as 8-bit RGB JPEG, upright, resized to the configured size
                         (geolocsft.images: the same preparation prediction applies)
    media_sha256.parquet every media file's path (relative to the dataset folder) and sha256
    stats.json           samples, skipped images by reason, target lengths

Only the manifest's **train** split is used, minus the ids in ``excluded_ids`` (training images
that are eval images: :mod:`geolocsft.leakage`, skipped as ``in_an_eval_set``). In the ``full``
and ``answer`` targets the answer's coordinates are the image's true coordinates from the
manifest (the captioning model's own answer, which may be off by up to the caption stage's flag
distance, stays in the caption file); the reasoning and the rest of the answer are the caption's.

Media files are per-item memoized (:mod:`geolocsft.memo`): each prepared JPEG is kept in the
memo's blob store under its sha256, keyed by the source image's sha256 and versioned by the
preparation settings and the image code, and hard-linked into ``media/``. Adding 100 images to
100,000 prepares only the 100; a reused file is byte-identical to a freshly prepared one. With
``scale_out.parts > 1`` the preparation runs as part jobs (:func:`prepare_media` on the images
of one part) and the dataset job only links what they stored.

Image paths are relative to the dataset folder, which LLaMA-Factory uses as ``dataset_dir``
(and ``media_dir``). The build is deterministic: the same captions and images give the same
bytes, so a dataset can be audited and re-made from the response store.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import ValidationError
from tqdm import tqdm

from geolocsft.captions.documents import find_caption_file, read_caption
from geolocsft.captions.schema import GeoCaption
from geolocsft.codegraph import module_code_version
from geolocsft.errors import GeolocsftError
from geolocsft.images import ImagePreparation, prepared_jpeg
from geolocsft.io import atomic_write_bytes, atomic_write_json
from geolocsft.layout import item_relpath, part_of
from geolocsft.memo import BlobStore, ItemTable, memo_version
from geolocsft.parallel import map_in_processes
from geolocsft.splits import in_fraction

log = logging.getLogger(__name__)

Target = Literal["full", "answer", "coordinates"]
IMAGE_TOKEN = "<image>"
MEDIA_DIR = "media"
MEDIA_INDEX = "media_sha256.parquet"
MEDIA_SCHEMA = {"image_id": pl.String, "media_sha256": pl.String}
#: Decimals of the answer's true coordinates in a sample (1e-6 degrees is about 0.1 m).
COORDINATE_DECIMALS = 6


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


@dataclass(frozen=True)
class SourceImage:
    """A training image of the dataset: where it is and what it shows."""

    image_id: str
    path: Path
    sha256: str
    lat: float
    lon: float


def answer_format(target: Target) -> Literal["caption", "coordinates"]:
    """How a run trained on ``target`` answers (see :func:`geolocsft.answers.parse_answer`)."""
    return "coordinates" if target == "coordinates" else "caption"


def read_geocaption(path: Path) -> GeoCaption:
    """The geo-caption of a caption file (earlier schemas upgraded), validated by the schema."""
    try:
        return GeoCaption.model_validate(read_caption(path)["caption"])
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise GeolocsftError(f"{path}: not a readable geo-caption file ({exc})") from None


def assistant_text(caption: GeoCaption, target: Target, lat: float, lon: float, where: str) -> str:
    """The assistant turn: the caption (``full``), its answer, or only the coordinates; the
    answer's coordinates are the true ones (``lat``, ``lon``), to 6 decimals (about 0.1 m: the
    digits beyond are float noise of the source, e.g. EXIF degrees-minutes-seconds, that a model
    would have to learn to write)."""
    lat, lon = round(lat, COORDINATE_DECIMALS), round(lon, COORDINATE_DECIMALS)
    if target == "coordinates":
        return _answer_json({"latitude": lat, "longitude": lon})
    truth = caption.answer.coordinates.model_copy(update={"latitude": lat, "longitude": lon})
    answer = caption.answer.model_copy(update={"coordinates": truth})
    if target == "full":
        if caption.thinking is None:
            raise GeolocsftError(
                f"{where}: the caption has no reasoning (answer-only 'metadata' backend): use "
                "target 'answer' or 'coordinates' for this dataset"
            )
        value = caption.model_copy(update={"answer": answer}).model_dump(mode="json", by_alias=True)
    else:
        value = caption.model_copy(update={"answer": answer}).model_dump(
            mode="json", by_alias=True, include={"answer"}
        )
    return _answer_json(value)


def _answer_json(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _assistant_text_of_file(caption_file: tuple[str, float, float], target: Target) -> str:
    """:func:`assistant_text` of a caption file (path, true lat, true lon)."""
    path, lat, lon = caption_file
    return assistant_text(read_geocaption(Path(path)), target, lat, lon, path)


def image_preparation(settings: DatasetSettings) -> ImagePreparation:
    """How the dataset's photos are prepared: also what prediction applies (same pixels)."""
    return ImagePreparation(
        max_side=settings.image_max_side,
        max_pixels=settings.image_max_pixels,
        jpeg_quality=settings.jpeg_quality,
    )


def media_relpath(image_id: str) -> str:
    """A media file's path relative to the dataset folder (as the dataset JSON holds it)."""
    return f"{MEDIA_DIR}/{item_relpath(image_id, '.jpg')}"


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


@dataclass
class Selection:
    """The images a dataset is made of, and those left out with the reason."""

    images: list[SourceImage]
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, image_id: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < 10:
            examples.append(image_id)


def select_images(
    manifest: pl.DataFrame,
    caption_index: pl.DataFrame,
    settings: DatasetSettings,
    excluded_ids: Collection[str] = frozenset(),
) -> Selection:
    """The train-split images with a usable caption, sorted by id (``excluded_ids`` left out)."""
    train = manifest.filter(pl.col("split") == "train")
    rows = {r["image_id"]: r for r in train.iter_rows(named=True)}
    selection = Selection(images=[])
    for row in caption_index.sort("image_id").iter_rows(named=True):
        image_id = row["image_id"]
        if image_id in excluded_ids:
            selection.skip("in_an_eval_set", image_id)
        elif row["status"] != "captioned":
            selection.skip(f"caption_{row['failure_reason'] or 'failed'}", image_id)
        elif row["flagged"] and not settings.include_flagged:
            selection.skip("flagged_caption", image_id)
        elif image_id not in rows:
            selection.skip("not_in_train_split", image_id)
        else:
            m = rows[image_id]
            selection.images.append(
                SourceImage(image_id, Path(m["path"]), m["sha256"], m["lat"], m["lon"])
            )
    return selection


def media_memo_version(settings: DatasetSettings) -> str:
    """Version of the memoized media: the preparation and the image code."""
    return memo_version(asdict(image_preparation(settings)), module_code_version("images"))


def prepare_media(
    images: Sequence[SourceImage],
    settings: DatasetSettings,
    memo_dir: Path,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[pl.DataFrame, int]:
    """The prepared JPEG of every image, in the memo: ``(image_id, media_sha256)`` per image
    and how many were prepared now (the others were in the memo already), in ``workers``
    processes (default: one per CPU core)."""
    table = ItemTable(memo_dir, "sft_media", media_memo_version(settings))
    blobs = BlobStore(memo_dir)
    keys = sorted({image.sha256 for image in images})
    stored = table.load(keys)
    known: dict[str, str] = {}
    if stored is not None:
        known = {k: v for k, v in zip(stored["key"], stored["media_sha256"], strict=True)}
        known = {k: v for k, v in known.items() if blobs.has(v)}
    todo: dict[str, SourceImage] = {}
    for image in images:
        if image.sha256 not in known:
            todo.setdefault(image.sha256, image)
    if todo:
        prepare = partial(_prepare_into_store, preparation=image_preparation(settings), blobs=blobs)
        digests = map_in_processes(
            prepare, [image.path for image in todo.values()], workers or os.cpu_count() or 1
        )
        made = dict(
            zip(
                todo,
                tqdm(
                    digests,
                    total=len(todo),
                    desc="dataset images",
                    unit="img",
                    mininterval=2.0,
                    disable=not progress or None,
                ),
                strict=True,
            )
        )
        table.add(
            pl.DataFrame(
                {"key": list(made), "media_sha256": list(made.values())},
                schema={"key": pl.String, "media_sha256": pl.String},
            )
        )
        known |= made
    frame = pl.DataFrame(
        {
            "image_id": [image.image_id for image in images],
            "media_sha256": [known[image.sha256] for image in images],
        },
        schema=MEDIA_SCHEMA,
    )
    log.info("dataset media: %d prepared, %d from the memo", len(todo), len(images) - len(todo))
    return frame, len(todo)


def _prepare_into_store(path: Path, preparation: ImagePreparation, blobs: BlobStore) -> str:
    """Prepare one original photo as a media file, store it; its sha256."""
    return blobs.put(prepared_jpeg(path, preparation))


def images_of_part(images: Sequence[SourceImage], part: int, parts: int) -> list[SourceImage]:
    """The images of one part of a split media preparation (by a hash of the image id)."""
    return [image for image in images if part_of(image.image_id, parts) == part]


def build_dataset(
    manifest: pl.DataFrame,
    caption_index: pl.DataFrame,
    captions_dir: Path,
    instruction: str,
    settings: DatasetSettings,
    out_dir: Path,
    *,
    memo_dir: Path,
    excluded_ids: frozenset[str] = frozenset(),
    prepared: pl.DataFrame | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the dataset files into ``out_dir``; return the statistics (also in stats.json).

    ``prepared``: the ``(image_id, media_sha256)`` tables of the part jobs, when the media were
    prepared by them (``scale_out.parts > 1``); otherwise they are prepared here, in ``workers``
    processes.
    """
    selection = select_images(manifest, caption_index, settings, excluded_ids)
    if not selection.images:
        raise GeolocsftError(
            f"sft dataset {settings.name}: no usable caption (skipped: {dict(selection.skipped)})"
        )
    # The caption index says where each caption file is (indexes written before it did not).
    indexed = (
        dict(zip(caption_index["image_id"], caption_index["caption_path"], strict=True))
        if "caption_path" in caption_index.columns
        else {}
    )

    def caption_file_of(image_id: str) -> str:
        relpath = indexed.get(image_id)
        return str(captions_dir / relpath if relpath else find_caption_file(captions_dir, image_id))

    # Reading and validating every caption is the O(N) part of a rebuild: in worker processes.
    texts = map_in_processes(
        partial(_assistant_text_of_file, target=settings.target),
        [(caption_file_of(image.image_id), image.lat, image.lon) for image in selection.images],
        workers or os.cpu_count() or 1,
    )
    user_turn = {"role": "user", "content": f"{IMAGE_TOKEN}{instruction.strip()}"}
    samples: list[tuple[SourceImage, dict[str, Any], bool]] = []
    media_paths: dict[str, str] = {}
    for image, text in zip(selection.images, texts, strict=True):
        media_paths[image.image_id] = media_relpath(image.image_id)
        sample = {
            "conversations": [user_turn, {"role": "assistant", "content": text}],
            "images": [media_paths[image.image_id]],
        }
        held_out = in_fraction(image.image_id, settings.validation_fraction, settings.split_salt)
        samples.append((image, sample, held_out))

    if prepared is None:
        prepared, _ = prepare_media(selection.images, settings, memo_dir, progress, workers)
    media = _media_of(selection.images, prepared, settings.name)
    links = [(media[image.image_id], media_paths[image.image_id]) for image in selection.images]
    BlobStore(memo_dir).link_all(out_dir, links)

    train = [s for _, s, v in samples if not v]
    validation = [s for _, s, v in samples if v]
    if not train:
        raise GeolocsftError(f"sft dataset {settings.name}: every sample fell into validation")
    write_samples(out_dir / f"{settings.name}.json", train)
    if settings.validation_fraction > 0:
        write_samples(out_dir / f"{settings.name}_val.json", validation)
    _write_json(
        out_dir / "dataset_info.json", dataset_info(settings.name, settings.validation_fraction > 0)
    )
    pl.DataFrame(
        {
            "path": [media_paths[image.image_id] for image in selection.images],
            "sha256": [media[image.image_id] for image in selection.images],
        },
        schema={"path": pl.String, "sha256": pl.String},
    ).write_parquet(out_dir / MEDIA_INDEX)
    lengths = np.array([len(s["conversations"][1]["content"]) for _, s, _ in samples])
    stats = {
        "dataset": settings.name,
        "target": settings.target,
        "samples": len(samples),
        "train": len(train),
        "validation": len(validation),
        "skipped": dict(selection.skipped.most_common()),
        "skipped_examples": selection.skipped_examples,
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


def _media_of(images: Sequence[SourceImage], prepared: pl.DataFrame, name: str) -> dict[str, str]:
    media = dict(zip(prepared["image_id"], prepared["media_sha256"], strict=True))
    missing = [image.image_id for image in images if image.image_id not in media]
    if missing:
        raise GeolocsftError(
            f"sft dataset {name}: the media preparation parts hold no file for "
            f"{len(missing)} image(s), e.g. {missing[:5]} (rerun the sft_media parts)"
        )
    return media


def write_samples(path: Path, samples: Sequence[dict[str, Any]]) -> None:
    """The samples as JSON with one space of indent: the bytes ``json.dumps(samples, indent=1,
    ensure_ascii=False)`` writes, several times faster on a million samples (the standard
    library's indenting encoder is pure Python; here every string goes through its C escaper).
    The bytes must not change: a run's fingerprint holds the sha256 of its dataset files."""
    if not samples:
        text = "[]\n"
    else:
        text = "[\n" + ",\n".join(_indented_sample(sample) for sample in samples) + "\n]\n"
    atomic_write_bytes(path, text.encode(), fsync=False)


def _indented_sample(sample: dict[str, Any]) -> str:
    """One sample as an element of :func:`write_samples`' list (indent level 1)."""
    turns, images = sample.get("conversations"), sample.get("images")
    if (
        list(sample) != ["conversations", "images"]
        or not isinstance(turns, list)
        or not isinstance(images, list)
        or not turns
        or not images
        or not all(isinstance(i, str) for i in images)
        or not all(
            isinstance(t, dict)
            and list(t) == ["role", "content"]
            and all(isinstance(v, str) for v in t.values())
            for t in turns
        )
    ):  # another shape: the standard library's encoder, one level in
        text = json.dumps(sample, indent=1, ensure_ascii=False)
        return "\n".join(f" {line}" for line in text.split("\n"))
    quote = json.encoder.encode_basestring
    turn_texts = ",\n".join(
        f'   {{\n    "role": {quote(t["role"])},\n    "content": {quote(t["content"])}\n   }}'
        for t in turns
    )
    image_texts = ",\n".join(f"   {quote(image)}" for image in images)
    return f' {{\n  "conversations": [\n{turn_texts}\n  ],\n  "images": [\n{image_texts}\n  ]\n }}'


def _write_json(path: Path, value: Any) -> None:
    atomic_write_json(path, value, indent=1, sort_keys=False, fsync=False)
