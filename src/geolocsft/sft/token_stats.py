"""Token lengths of an SFT dataset as the model will see them, against the run's ``cutoff_len``.

Each sample of a LLaMA-Factory ShareGPT dataset (see :mod:`geolocsft.sft.dataset`) is rendered
with the model's own processor: its chat template over the conversation (the ``<image>``
placeholder becomes an image part), the image resized as LLaMA-Factory resizes it
(:func:`geolocsft.images.fit_to_model` with the run's ``image_max_pixels``), and the image
tokens expanded by the processor itself (``processor(text=..., images=...)``). As in
LLaMA-Factory, the prompt (system, user turn, generation prompt) and the target (the assistant
turn and its end-of-turn tokens) are tokenized separately.

LLaMA-Factory cuts a sample longer than ``cutoff_len``: the end of the answer, or of the prompt,
and a cut through the image tokens makes training fail. :func:`summarize` reports the length
distribution and warns (or, with ``on_truncation: fail``, stops) naming the samples over the cut.

The counts are per-item memoized (:mod:`geolocsft.memo`): an :class:`~geolocsft.memo.ItemTable`
keyed by the sample's content and its media files' sha256, versioned by the processor's files,
``image_max_pixels``/``image_min_pixels`` and this module's code, so a dataset that grew by 100
samples tokenizes only those 100 (and ``scale_out.parts > 1`` splits them over part jobs). The
counts do not depend on ``cutoff_len``; :func:`summarize` applies it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from tqdm import tqdm

from geolocsft.codegraph import module_code_version
from geolocsft.errors import GeolocsftError
from geolocsft.images import IMAGE_MIN_PIXELS, load_for_model
from geolocsft.io import canonical_json, file_sha256
from geolocsft.layout import part_of
from geolocsft.memo import ItemTable, memo_version
from geolocsft.sft.dataset import IMAGE_TOKEN, MEDIA_INDEX

log = logging.getLogger(__name__)

OnTruncation = Literal["warn", "fail"]
LENGTH_SCHEMA = {
    "index": pl.Int64,
    "sample_id": pl.String,
    "images": pl.Int64,
    "image_tokens": pl.Int64,
    "image_end": pl.Int64,
    "prompt_tokens": pl.Int64,
    "target_tokens": pl.Int64,
    "total_tokens": pl.Int64,
}
#: Samples named in the log line and the error message (the JSON report lists them all).
WORST_NAMED = 10
COUNT_COLUMNS = [c for c in LENGTH_SCHEMA if c not in ("index", "sample_id")]
#: Files of a model folder that are weights, not processor/tokenizer/config files.
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack"})


def sample_id(sample: dict[str, Any], index: int) -> str:
    """A sample's name: its image's file stem (the image id), else ``#<index>``."""
    images = sample.get("images") or []
    return Path(images[0]).stem if images else f"#{index}"


def chat_messages(
    sample: dict[str, Any], where: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ShareGPT conversation in the processor's chat format: (prompt turns, answer turn)."""
    turns = sample.get("conversations") or []
    if len(turns) < 2 or turns[-1].get("role") != "assistant":
        raise GeolocsftError(f"{where}: a sample needs user turn(s) and a final assistant turn")

    def parts(text: str) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for position, piece in enumerate(text.split(IMAGE_TOKEN)):
            if position:
                content.append({"type": "image"})
            if piece:
                content.append({"type": "text", "text": piece})
        return content

    messages = [{"role": t["role"], "content": parts(t["content"])} for t in turns]
    return messages[:-1], messages[-1]


def _count(ids: Sequence[int], token_id: int | None) -> int | None:
    return None if token_id is None else sum(1 for i in ids if i == token_id)


def _end_of(ids: Sequence[int], token_id: int | None) -> int | None:
    """Position just after the last ``token_id`` in ``ids`` (0 without one)."""
    if token_id is None:
        return None
    return max((i + 1 for i, t in enumerate(ids) if t == token_id), default=0)


def kept_lengths(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """Prompt and answer tokens LLaMA-Factory keeps of a single-turn sample (its infer_seqlen).

    A short answer (under half the cut) is kept whole and the prompt's end is cut; a short
    prompt is kept whole and the answer's end is cut; otherwise both shrink in proportion.
    """
    if target_len * 2 < cutoff_len:
        target_room = cutoff_len
    elif source_len * 2 < cutoff_len:
        target_room = cutoff_len - source_len
    else:
        target_room = int(cutoff_len * (target_len / (source_len + target_len)))
    kept_target = min(target_room, target_len)
    kept_source = min(max(cutoff_len - kept_target, 0), source_len)
    return kept_source, kept_target


def sample_lengths(
    processor: Any,
    sample: dict[str, Any],
    media_dir: Path,
    image_max_pixels: int,
    image_min_pixels: int,
    where: str,
) -> dict[str, Any]:
    """Prompt, target and image token counts of one sample."""
    prompt_messages, answer = chat_messages(sample, where)
    placeholders = sum(t["content"].count(IMAGE_TOKEN) for t in sample["conversations"])
    paths = [media_dir / p for p in sample.get("images") or []]
    if placeholders != len(paths):
        raise GeolocsftError(
            f"{where}: {placeholders} {IMAGE_TOKEN} placeholders but {len(paths)} images"
        )
    images = []
    for path in paths:
        if not path.is_file():
            raise GeolocsftError(f"{where}: image {path} does not exist")
        images.append(load_for_model(path, image_max_pixels, image_min_pixels))
    prompt_text = processor.apply_chat_template(prompt_messages, add_generation_prompt=True)
    full_text = processor.apply_chat_template([*prompt_messages, answer])
    prompt_ids = processor(text=[prompt_text], images=images or None, add_special_tokens=False)[
        "input_ids"
    ][0]
    tokenizer = processor.tokenizer
    if full_text.startswith(prompt_text):
        target_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)
        target_tokens = len(target_ids["input_ids"])
    else:  # a template that renders the prompt differently once answered: count the difference
        full_ids = processor(text=[full_text], images=images or None, add_special_tokens=False)
        target_tokens = len(full_ids["input_ids"][0]) - len(prompt_ids)
    image_token_id = getattr(processor, "image_token_id", None)
    return {
        "images": len(images),
        "image_tokens": _count(list(prompt_ids), image_token_id),
        "image_end": _end_of(list(prompt_ids), image_token_id),
        "prompt_tokens": len(prompt_ids),
        "target_tokens": target_tokens,
        "total_tokens": len(prompt_ids) + target_tokens,
    }


def processor_files_sha256(model_dir: Path) -> str:
    """One sha256 over a model folder's processor, tokenizer and config files (no weights):
    what the token counts depend on."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        if path.suffix in WEIGHT_SUFFIXES or path.name.startswith("geolocsft_"):
            continue
        relative = path.relative_to(model_dir).as_posix()
        digest.update(f"{relative}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()


def counts_memo_version(model_dir: Path, image_max_pixels: int, image_min_pixels: int) -> str:
    """Version of memoized token counts: the processor's files, the image resize, the code."""
    return memo_version(
        processor_files_sha256(model_dir),
        image_max_pixels,
        image_min_pixels,
        module_code_version("sft.token_stats"),
    )


def media_hashes(dataset_dir: Path, samples: Sequence[dict[str, Any]]) -> dict[str, str]:
    """sha256 of every media file the samples use: from the dataset's media index (written by
    sft_dataset), hashed here for files it does not list."""
    index = Path(dataset_dir) / MEDIA_INDEX
    known: dict[str, str] = {}
    if index.is_file():
        table = pl.read_parquet(index)
        known = dict(zip(table["path"], table["sha256"], strict=True))
    for sample in samples:
        for image in sample.get("images") or []:
            path = Path(dataset_dir) / image
            if image not in known and path.is_file():
                known[image] = file_sha256(path)
    return known


def sample_key(sample: dict[str, Any], hashes: dict[str, str]) -> str:
    """Memo key of a sample's counts: its content and its images' bytes."""
    images = [hashes.get(image, f"missing:{image}") for image in sample.get("images") or []]
    return hashlib.sha256(canonical_json([sample, images]).encode()).hexdigest()


def token_lengths(
    dataset_json: Path,
    media_dir: Path,
    model_dir: Path,
    image_max_pixels: int,
    image_min_pixels: int = IMAGE_MIN_PIXELS,
    progress: bool = True,
    *,
    memo_dir: Path | None = None,
    part: tuple[int, int] | None = None,
) -> pl.DataFrame:
    """One row per sample of ``dataset_json``: index, id, image/prompt/target/total tokens.

    ``media_dir`` is the folder the samples' image paths are relative to (LLaMA-Factory's
    ``media_dir``: the dataset folder). With ``memo_dir`` the counts of samples seen before come
    from the memo and new ones are stored there; ``part=(i, n)`` counts only the samples of part
    ``i`` of ``n`` (by a hash of the sample id).
    """
    try:
        samples = json.loads(Path(dataset_json).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GeolocsftError(f"{dataset_json}: not a readable dataset JSON ({exc})") from None
    if not isinstance(samples, list):
        raise GeolocsftError(f"{dataset_json}: expected a list of ShareGPT samples")
    chosen = [
        (index, sample_id(sample, index), sample)
        for index, sample in enumerate(samples)
        if part is None or part_of(sample_id(sample, index), part[1]) == part[0]
    ]
    hashes = media_hashes(Path(media_dir), [sample for _, _, sample in chosen])
    keys = [sample_key(sample, hashes) for _, _, sample in chosen]
    table = None
    stored: dict[str, dict[str, Any]] = {}
    if memo_dir is not None:
        version = counts_memo_version(Path(model_dir), image_max_pixels, image_min_pixels)
        table = ItemTable(Path(memo_dir), "sft_token_counts", version)
        found = table.load(keys)
        if found is not None:
            stored = {row["key"]: row for row in found.iter_rows(named=True)}
    todo = [(i, k) for i, k in enumerate(keys) if k not in stored]
    if todo:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_dir)
        new_rows = []
        for position, key in tqdm(
            todo,
            desc="token lengths",
            unit="sample",
            disable=not progress or None,
            mininterval=2.0,
        ):
            index, name, sample = chosen[position]
            if key in stored:  # the same sample twice in the dataset
                continue
            where = f"{dataset_json} sample {index} ({name})"
            lengths = sample_lengths(
                processor, sample, Path(media_dir), image_max_pixels, image_min_pixels, where
            )
            stored[key] = {"key": key, **lengths}
            new_rows.append(stored[key])
        if table is not None and new_rows:
            table.add(
                pl.DataFrame(
                    new_rows,
                    schema={"key": pl.String, **{c: LENGTH_SCHEMA[c] for c in COUNT_COLUMNS}},
                )
            )
    log.info("token counts: %d counted, %d from the memo", len(todo), len(keys) - len(todo))
    rows = [
        {"index": index, "sample_id": name, **{c: stored[key][c] for c in COUNT_COLUMNS}}
        for (index, name, _), key in zip(chosen, keys, strict=True)
    ]
    return pl.DataFrame(rows, schema=LENGTH_SCHEMA)


def distribution(values: pl.Series) -> dict[str, float | int] | None:
    """min, median, mean, p90, p99 and max of a column of counts (None when it is empty)."""
    data = values.drop_nulls().to_numpy()
    if data.size == 0:
        return None
    return {
        "min": int(data.min()),
        "median": float(np.median(data)),
        "mean": round(float(data.mean()), 2),
        "p90": float(np.percentile(data, 90)),
        "p99": float(np.percentile(data, 99)),
        "max": int(data.max()),
    }


def _named(rows: list[dict[str, Any]], limit: int = WORST_NAMED) -> str:
    shown = ", ".join(f"{r['sample_id']} ({r['total_tokens']} tokens)" for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def summarize(
    lengths: pl.DataFrame, cutoff_len: int, on_truncation: OnTruncation = "warn"
) -> dict[str, Any]:
    """Length distribution and the samples longer than ``cutoff_len`` (warned about or fatal).

    ``on_truncation``: ``warn`` logs a WARNING naming how many samples LLaMA-Factory will cut and
    the worst ones; ``fail`` raises :class:`GeolocsftError` naming them. Samples whose cut goes
    through their image tokens (training fails on them) are counted apart.
    """
    if on_truncation not in ("warn", "fail"):
        raise GeolocsftError(f"on_truncation: {on_truncation!r} is not 'warn' or 'fail'")
    over = lengths.filter(pl.col("total_tokens") > cutoff_len).sort(
        ["total_tokens", "index"], descending=[True, False]
    )
    worst = []
    image_cut = []
    for r in over.iter_rows(named=True):
        kept_prompt, kept_answer = kept_lengths(r["prompt_tokens"], r["target_tokens"], cutoff_len)
        cuts_image = r["image_end"] is not None and kept_prompt < r["image_end"]
        if cuts_image:
            image_cut.append(r["sample_id"])
        worst.append(
            {
                "sample_id": r["sample_id"],
                "index": r["index"],
                "total_tokens": r["total_tokens"],
                "over_by": r["total_tokens"] - cutoff_len,
                "prompt_tokens_cut": r["prompt_tokens"] - kept_prompt,
                "answer_tokens_cut": r["target_tokens"] - kept_answer,
                "image_tokens_cut": cuts_image,
            }
        )
    stats: dict[str, Any] = {
        "samples": lengths.height,
        "cutoff_len": cutoff_len,
        "total_tokens": distribution(lengths["total_tokens"]),
        "prompt_tokens": distribution(lengths["prompt_tokens"]),
        "target_tokens": distribution(lengths["target_tokens"]),
        "image_tokens": distribution(lengths["image_tokens"]),
        "over_cutoff": {
            "count": over.height,
            "share": round(over.height / lengths.height, 6) if lengths.height else 0.0,
            "image_tokens_cut": len(image_cut),
            "sample_ids": over["sample_id"].to_list(),
            "image_tokens_cut_ids": image_cut,
            "worst": worst[:WORST_NAMED],
        },
    }
    if over.height:
        message = (
            f"{over.height} of {lengths.height} samples are longer than cutoff_len={cutoff_len} "
            "tokens and LLaMA-Factory will truncate them (the end of the prompt or of the "
            f"answer; in {len(image_cut)} the cut goes through the image tokens, which makes "
            f"training fail); the worst: {_named(worst)}. Raise cutoff_len, lower "
            "image_max_pixels (fewer image tokens) or use a shorter dataset target"
        )
        if on_truncation == "fail":
            raise GeolocsftError(f"{message} (on_truncation: fail)")
        log.warning("%s", message)
    else:
        longest = stats["total_tokens"]["max"] if stats["total_tokens"] else None
        log.info(
            "all %d samples fit cutoff_len=%d (longest: %s)", lengths.height, cutoff_len, longest
        )
    return stats


def plot_lengths(lengths: pl.DataFrame, cutoff_len: int, path: Path, title: str) -> Path:
    """A PNG histogram of the samples' total tokens, with ``cutoff_len`` as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    totals = lengths["total_tokens"].to_numpy()
    if totals.size:
        axes.hist(totals, bins=min(50, max(5, totals.size // 4)), color="tab:blue", alpha=0.8)
    axes.axvline(cutoff_len, color="tab:red", linestyle="--", label=f"cutoff_len {cutoff_len}")
    over = int((totals > cutoff_len).sum()) if totals.size else 0
    axes.set_xlabel("tokens per sample (prompt + image + answer)")
    axes.set_ylabel("samples")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"{title}: {over} of {totals.size} over cutoff_len")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(path)
    return path
