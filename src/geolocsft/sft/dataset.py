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
of one part) and the dataset job only links what they stored. A sample's assistant turn is
memoized by the caption file's sha256 (from the caption index) and the true coordinates
(:class:`AssistantTexts`): a rebuild reads and validates only the caption files it has not seen.
Samples are written as they are made, a block at a time: nothing per image of the whole dataset
is held in memory.

Image paths are relative to the dataset folder, which LLaMA-Factory uses as ``dataset_dir``
(and ``media_dir``). The build is deterministic: the same captions and images give the same
bytes, so a dataset can be audited and re-made from the response store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
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
from geolocsft.io import atomic_write_json
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


#: The columns of :attr:`Selection.images`: a training image of the dataset, where it is, what
#: it shows, and its caption file (a table, not an object per image: a million of them).
IMAGE_SCHEMA = {
    "image_id": pl.String,
    "path": pl.String,
    "sha256": pl.String,
    "lat": pl.Float64,
    "lon": pl.Float64,
    "caption_path": pl.String,
    "caption_sha256": pl.String,
}


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


class AssistantTexts:
    """The assistant turns of samples, memoized by the caption file's content.

    Reading and validating every caption file is the O(N) part of a rebuild. A caption index
    gives each file's sha256 (``caption_sha256``), so the text made from a file is kept in the
    per-item memo under (that sha256, the true coordinates), versioned by the target and the
    code that makes it: a rebuild reads only the files it has not seen. The others are read in
    worker processes; a file without a known sha256 (an index from before) is always read.
    """

    def __init__(self, memo_dir: Path, target: Target) -> None:
        self.target = target
        self.table = ItemTable(
            memo_dir, "sft_texts", memo_version(target, module_code_version("sft.dataset"))
        )

    @staticmethod
    def key(caption_sha256: str, lat: float, lon: float) -> str:
        return hashlib.sha256(f"{caption_sha256}\0{lat!r}\0{lon!r}".encode()).hexdigest()

    def keys(
        self, caption_sha256s: Iterable[str | None], lats: Iterable[float], lons: Iterable[float]
    ) -> list[str | None]:
        """:meth:`key` of each caption file; None where its sha256 is not known (always read)."""
        return [
            self.key(sha, lat, lon) if sha else None
            for sha, lat, lon in zip(caption_sha256s, lats, lons, strict=True)
        ]

    def texts(
        self,
        caption_sha256s: Sequence[str | None],
        caption_files: Sequence[tuple[str, float, float]],
        workers: int,
    ) -> list[str]:
        """The text of each caption file (path, true lat, true lon), in order."""
        keys = self.keys(
            caption_sha256s, (f[1] for f in caption_files), (f[2] for f in caption_files)
        )
        wanted = [k for k in keys if k is not None]
        stored = self.table.load(wanted) if wanted else None
        known = dict(zip(stored["key"], stored["text"], strict=True)) if stored is not None else {}
        todo = [i for i, key in enumerate(keys) if key is None or key not in known]
        read = map_in_processes(
            partial(_assistant_text_of_file, target=self.target),
            [caption_files[i] for i in todo],
            workers,
        )
        texts = [known.get(key) if key is not None else None for key in keys]
        new: dict[str, str] = {}
        for i, text in zip(todo, read, strict=True):
            texts[i] = text
            if keys[i] is not None:
                new[keys[i]] = text  # type: ignore[index]
        if new:
            self.table.add(
                pl.DataFrame(
                    {"key": list(new), "text": list(new.values())},
                    schema={"key": pl.String, "text": pl.String},
                )
            )
        log.info(
            "sample texts: %d read from caption files, %d from the memo",
            len(todo),
            len(keys) - len(todo),
        )
        return texts  # type: ignore[return-value]


def new_items(
    manifest: pl.DataFrame,
    caption_index: pl.DataFrame,
    settings: DatasetSettings,
    memo_dir: Path,
    excluded_ids: Collection[str] = frozenset(),
) -> int:
    """How many of a dataset's images :func:`build_dataset` would prepare or read anew: the
    larger of the media not in the memo and the caption files whose text is not (the work it
    does in worker processes; the rest is linked from the memo)."""
    images = select_images(manifest, caption_index, settings, excluded_ids).images
    media = ItemTable(memo_dir, "sft_media", media_memo_version(settings))
    new_media = media.count_missing(images["sha256"])
    texts = AssistantTexts(memo_dir, settings.target)
    keys = texts.keys(images["caption_sha256"], images["lat"], images["lon"])
    known = [key for key in keys if key is not None]
    unknown = len(keys) - len(known)  # an index from before caption_sha256: always read
    new_texts = texts.table.count_missing(pl.Series(known, dtype=pl.String)) + unknown
    return max(new_media, new_texts)


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
    """The images a dataset is made of (:data:`IMAGE_SCHEMA`, sorted by id), and those left out:
    how many per reason (most first, ties in order of the first id) and up to 10 ids each."""

    images: pl.DataFrame
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)


#: The manifest columns a dataset is made from (a million-row manifest holds many more).
DATASET_MANIFEST_COLUMNS = ["image_id", "path", "sha256", "lat", "lon", "split"]
#: The caption index columns it reads.
CAPTION_INDEX_COLUMNS = (
    "image_id",
    "status",
    "failure_reason",
    "flagged",
    "caption_path",
    "caption_sha256",
)


def read_caption_index(path: Path | str) -> pl.DataFrame:
    """The columns of a caption run's ``index.csv`` that :func:`select_images` reads (an index
    written before ``caption_path`` existed has no such column)."""
    index = pl.scan_csv(path)
    names = index.collect_schema().names()
    return index.select([c for c in CAPTION_INDEX_COLUMNS if c in names]).collect()


#: Samples made at a time (their captions read in worker processes, then written).
SAMPLE_BLOCK = 65_536
#: Ids listed per reason for skipping in the dataset's stats.
SKIPPED_EXAMPLES = 10


def select_images(
    manifest: pl.DataFrame,
    caption_index: pl.DataFrame,
    settings: DatasetSettings,
    excluded_ids: Collection[str] = frozenset(),
) -> Selection:
    """The train-split images with a usable caption, sorted by id (``excluded_ids`` left out).

    One join and one expression over the tables (a million rows: no Python object per row)."""
    train = (
        manifest.lazy()
        .filter(pl.col("split") == "train")
        .select("image_id", "path", "sha256", "lat", "lon", pl.lit(True).alias("in_train"))
    )
    failure = (
        pl.col("failure_reason")
        if "failure_reason" in caption_index.columns
        else pl.lit(None, dtype=pl.String)
    )
    caption_path, caption_sha256 = (
        pl.col(name).cast(pl.String) if name in caption_index.columns else pl.lit(None, pl.String)
        for name in ("caption_path", "caption_sha256")
    )
    # true/false from the index's CSV (a column of nothing but empty cells reads as strings)
    flagged = (pl.col("flagged").cast(pl.String).str.to_lowercase() == "true").fill_null(False)
    reason = (
        pl.when(pl.col("image_id").is_in(sorted(excluded_ids)) if excluded_ids else pl.lit(False))
        .then(pl.lit("in_an_eval_set"))
        .when(pl.col("status") != "captioned")
        .then(
            pl.concat_str(
                pl.lit("caption_"),
                pl.when(failure.is_null() | (failure == ""))
                .then(pl.lit("failed"))
                .otherwise(failure),
            )
        )
        .when(flagged & (not settings.include_flagged))
        .then(pl.lit("flagged_caption"))
        .when(pl.col("in_train").is_null())
        .then(pl.lit("not_in_train_split"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    rows = (
        caption_index.lazy()
        .select(
            pl.col("image_id").cast(pl.String),
            pl.col("status").cast(pl.String),
            failure.cast(pl.String).alias("failure_reason"),
            flagged.alias("flagged"),
            caption_path.alias("caption_path"),
            caption_sha256.alias("caption_sha256"),
        )
        .sort("image_id")
        .join(train, on="image_id", how="left", maintain_order="left")
        .with_columns(reason.alias("reason"))
        .collect()
    )
    skipped = (
        rows.lazy()
        .with_row_index("row")
        .filter(pl.col("reason").is_not_null())
        .group_by("reason")
        .agg(
            pl.len().alias("count"),
            pl.col("row").first().alias("first"),
            pl.col("image_id").head(SKIPPED_EXAMPLES).alias("examples"),
        )
        .collect()
    )
    by_first = skipped.sort("first")  # a Counter keeps the order of first appearance
    selection = Selection(
        images=rows.filter(pl.col("reason").is_null()).select(
            [pl.col(name).cast(dtype) for name, dtype in IMAGE_SCHEMA.items()]
        ),
        skipped=Counter(dict(zip(by_first["reason"], by_first["count"], strict=True))),
        skipped_examples=dict(zip(by_first["reason"], by_first["examples"].to_list(), strict=True)),
    )
    return selection


def media_memo_version(settings: DatasetSettings) -> str:
    """Version of the memoized media: the preparation and the image code."""
    return memo_version(asdict(image_preparation(settings)), module_code_version("images"))


def prepare_media(
    images: pl.DataFrame,
    settings: DatasetSettings,
    memo_dir: Path,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[pl.DataFrame, int]:
    """The prepared JPEG of every image (rows of :data:`IMAGE_SCHEMA`), in the memo:
    ``(image_id, media_sha256)`` per image and how many were prepared now (the others were in
    the memo already), in ``workers`` processes (default: one per CPU core)."""
    table = ItemTable(memo_dir, "sft_media", media_memo_version(settings))
    blobs = BlobStore(memo_dir)
    contents = images.select("sha256", "path").unique("sha256", keep="first", maintain_order=True)
    stored = table.load(contents["sha256"])
    if stored is None:
        stored = pl.DataFrame(schema={"key": pl.String, "media_sha256": pl.String})
    # A memo record whose blob was deleted (a pruned memo) is prepared again.
    present = blobs.present(stored["media_sha256"].to_list())
    stored = stored.filter(pl.Series(present, dtype=pl.Boolean))
    todo = contents.join(
        stored, left_on="sha256", right_on="key", how="anti", maintain_order="left"
    )
    if todo.height:
        prepare = partial(_prepare_into_store, preparation=image_preparation(settings), blobs=blobs)
        digests = map_in_processes(prepare, todo["path"].to_list(), workers or os.cpu_count() or 1)
        made = pl.DataFrame(
            {
                "key": todo["sha256"],
                "media_sha256": list(
                    tqdm(
                        digests,
                        total=todo.height,
                        desc="dataset images",
                        unit="img",
                        mininterval=2.0,
                        disable=not progress or None,
                    )
                ),
            },
            schema={"key": pl.String, "media_sha256": pl.String},
        )
        table.add(made)
        stored = pl.concat([stored.select("key", "media_sha256"), made])
    frame = images.select("image_id", "sha256").join(
        stored.select("key", "media_sha256"),
        left_on="sha256",
        right_on="key",
        how="left",
        maintain_order="left",
    )
    log.info(
        "dataset media: %d prepared, %d from the memo", todo.height, images.height - todo.height
    )
    return frame.select("image_id", "media_sha256").cast(MEDIA_SCHEMA), todo.height  # type: ignore[arg-type]


def _prepare_into_store(path: str, preparation: ImagePreparation, blobs: BlobStore) -> str:
    """Prepare one original photo as a media file, store it; its sha256."""
    return blobs.put(prepared_jpeg(Path(path), preparation))


def images_of_part(images: pl.DataFrame, part: int, parts: int) -> pl.DataFrame:
    """The images of one part of a split media preparation (by a hash of the image id)."""
    chosen = [part_of(image_id, parts) == part for image_id in images["image_id"]]
    return images.filter(pl.Series(chosen, dtype=pl.Boolean))


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
    processes. Samples are written as they are made, never held all at once (a million
    samples of the ``full`` target are gigabytes of Python objects).
    """
    selection = select_images(manifest, caption_index, settings, excluded_ids)
    images = selection.images
    if images.height == 0:
        raise GeolocsftError(
            f"sft dataset {settings.name}: no usable caption (skipped: {dict(selection.skipped)})"
        )
    user_turn = {"role": "user", "content": f"{IMAGE_TOKEN}{instruction.strip()}"}
    captions = str(captions_dir)
    texts_memo = AssistantTexts(memo_dir, settings.target)
    lengths = np.empty(images.height, dtype=np.int64)
    counts = Counter[bool]()
    with (
        SampleWriter(out_dir / f"{settings.name}.json") as train,
        SampleWriter(
            out_dir / f"{settings.name}_val.json" if settings.validation_fraction > 0 else None
        ) as validation,
    ):
        # A block of images at a time: the Python objects of a million never exist at once.
        for start in range(0, images.height, SAMPLE_BLOCK):
            block = images.slice(start, SAMPLE_BLOCK)
            image_ids: list[str] = block["image_id"].to_list()
            # The caption index says where each caption file is (older indexes did not).
            caption_files = [
                f"{captions}/{relpath}"
                if relpath
                else str(find_caption_file(captions_dir, image_id))
                for image_id, relpath in zip(image_ids, block["caption_path"], strict=True)
            ]
            texts = texts_memo.texts(
                block["caption_sha256"].to_list(),
                list(zip(caption_files, block["lat"], block["lon"], strict=True)),
                workers or os.cpu_count() or 1,
            )
            for i, (image_id, text) in enumerate(zip(image_ids, texts, strict=True), start):
                sample = {
                    "conversations": [user_turn, {"role": "assistant", "content": text}],
                    "images": [media_relpath(image_id)],
                }
                held_out = in_fraction(image_id, settings.validation_fraction, settings.split_salt)
                (validation if held_out else train).write(sample)
                counts[held_out] += 1
                lengths[i] = len(text)
        if not counts[False]:
            raise GeolocsftError(f"sft dataset {settings.name}: every sample fell into validation")
    # The media after the captions: a broken caption is reported before hours of preparation.
    if prepared is None:
        prepared, _ = prepare_media(images, settings, memo_dir, progress, workers)
    media = _media_of(images, prepared, settings.name)
    media_paths = [media_relpath(image_id) for image_id in images["image_id"]]
    BlobStore(memo_dir).link_all(out_dir, zip(media.to_list(), media_paths, strict=True))
    pl.DataFrame(
        {"path": media_paths, "sha256": media}, schema={"path": pl.String, "sha256": pl.String}
    ).write_parquet(out_dir / MEDIA_INDEX)
    del media
    _write_json(
        out_dir / "dataset_info.json", dataset_info(settings.name, settings.validation_fraction > 0)
    )
    stats = {
        "dataset": settings.name,
        "target": settings.target,
        "samples": images.height,
        "train": counts[False],
        "validation": counts[True],
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


def _media_of(images: pl.DataFrame, prepared: pl.DataFrame, name: str) -> pl.Series:
    """The media file (sha256) of each image, in the images' order."""
    media = images.select("image_id").join(
        prepared.select("image_id", "media_sha256").unique("image_id", keep="first"),
        on="image_id",
        how="left",
        maintain_order="left",
    )["media_sha256"]
    if media.null_count():
        missing = images.filter(media.is_null())["image_id"].head(5).to_list()
        raise GeolocsftError(
            f"sft dataset {name}: the media preparation parts hold no file for "
            f"{media.null_count()} image(s), e.g. {missing} (rerun the sft_media parts)"
        )
    return media


class SampleWriter:
    """Writes samples one by one into the bytes of :func:`write_samples` (a temporary file,
    renamed into place when the ``with`` block ends without an error). ``path`` None: a
    writer that writes nothing (a dataset without a validation part)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._handle: Any = None

    def __enter__(self) -> SampleWriter:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_name(f".{self.path.name}.tmp")
            self._handle = self._tmp.open("w", encoding="utf-8", buffering=1 << 20)
        return self

    def write(self, sample: dict[str, Any]) -> None:
        if self._handle is None:
            return
        self._handle.write(("[\n" if not self.count else ",\n") + _indented_sample(sample))
        self.count += 1

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if self._handle is None or self.path is None:
            return
        try:
            self._handle.write("\n]\n" if self.count else "[]\n")
        finally:
            self._handle.close()
        if kind is None:
            self._tmp.replace(self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_samples(path: Path, samples: Iterable[dict[str, Any]]) -> None:
    """The samples as JSON with one space of indent: the bytes ``json.dumps(samples, indent=1,
    ensure_ascii=False)`` writes, several times faster on a million samples (the standard
    library's indenting encoder is pure Python; here every string goes through its C escaper),
    written one by one (:class:`SampleWriter`).
    The bytes must not change: a run's fingerprint holds the sha256 of its dataset files."""
    with SampleWriter(path) as writer:
        for sample in samples:
            writer.write(sample)


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
