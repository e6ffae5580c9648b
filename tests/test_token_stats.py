"""Token lengths of an SFT dataset with the tiny model's processor, against cutoff_len."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import pytest
from conftest import write_photo

from geolocsft.errors import GeolocsftError
from geolocsft.io import file_sha256
from geolocsft.settings import configured
from geolocsft.sft import token_stats
from geolocsft.sft.dataset import DatasetSettings, build_dataset
from geolocsft.sft.token_stats import (
    kept_lengths,
    plot_lengths,
    summarize,
    token_lengths,
)
from geolocsft.testing.standin import caption_for

INSTRUCTION = "Where was this photo taken? Answer with latitude and longitude."
#: Image id -> square side in pixels; the tiny processor gives one token per 28x28 pixels.
SIDES = {"a56": 56, "b112": 112, "c224": 224, "d448": 448}
PROCESSOR_MAX_PIXELS = 64 * 28 * 28  # the tiny model's image processor caps at 64 tokens


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geolocsft.sft.tiny_model import build

    return build(tmp_path_factory.mktemp("tiny") / "model", pretrain_steps=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset written by geolocsft.sft.dataset from four square photos of growing size."""
    root = tmp_path_factory.mktemp("sft")
    captions = root / "captions"
    captions.mkdir()
    paths = {}
    for seed, (image_id, side) in enumerate(SIDES.items()):
        paths[image_id] = write_photo(root / "images" / f"{image_id}.png", seed, (side, side))
        document = {"image_id": image_id, "caption": caption_for(10.0 + seed, 20.0)}
        (captions / f"{image_id}.json").write_text(json.dumps(document))
    manifest = pl.DataFrame(
        {
            "image_id": list(paths),
            "path": [str(p) for p in paths.values()],
            "sha256": [file_sha256(p) for p in paths.values()],
            "lat": [10.0 + seed for seed in range(len(paths))],
            "lon": [20.0] * len(paths),
            "split": ["train"] * len(paths),
        }
    )
    index = pl.DataFrame(
        {
            "image_id": list(SIDES),
            "status": ["captioned"] * len(SIDES),
            "flagged": [False] * len(SIDES),
            "failure_reason": [None] * len(SIDES),
        }
    )
    settings = configured(DatasetSettings, name="geo", target="coordinates", image_max_side=1024)
    build_dataset(
        manifest, index, captions, INSTRUCTION, settings, root / "geo", memo_dir=root / "memo"
    )
    return root / "geo" / "geo.json"


@pytest.fixture(scope="module")
def lengths(dataset: Path, tiny_model: Path) -> pl.DataFrame:
    return token_lengths(
        dataset, dataset.parent, tiny_model, image_max_pixels=PROCESSOR_MAX_PIXELS, progress=False
    )


def test_image_tokens_grow_with_the_image_up_to_the_pixel_cap(dataset, tiny_model, lengths):
    assert lengths["sample_id"].to_list() == list(SIDES)
    assert lengths["images"].to_list() == [1, 1, 1, 1]
    # (side / 28)^2 tokens, at least 4 (the processor's min_pixels), at most 64
    assert lengths["image_tokens"].to_list() == [4, 16, 64, 64]
    text_tokens = lengths["prompt_tokens"] - lengths["image_tokens"]
    assert text_tokens.n_unique() == 1 and text_tokens[0] > len(INSTRUCTION.split())
    assert (lengths["target_tokens"] > 5).all()
    assert (lengths["total_tokens"] == lengths["prompt_tokens"] + lengths["target_tokens"]).all()
    assert lengths["total_tokens"].to_list() == sorted(lengths["total_tokens"].to_list())

    capped = token_lengths(
        dataset, dataset.parent, tiny_model, image_max_pixels=112 * 112, progress=False
    )
    assert capped["image_tokens"].to_list() == [4, 16, 16, 16]
    assert capped["target_tokens"].to_list() == lengths["target_tokens"].to_list()


def test_lengths_are_those_llamafactory_encodes(dataset, tiny_model, lengths):
    """LLaMA-Factory's own template and multimodal plugin give the same prompt/answer lengths."""
    pytest.importorskip("llamafactory")
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments, ModelArguments
    from llamafactory.model import load_tokenizer

    loaded = load_tokenizer(
        ModelArguments(model_name_or_path=str(tiny_model), image_max_pixels=PROCESSOR_MAX_PIXELS)
    )
    tokenizer, processor = loaded["tokenizer"], loaded["processor"]
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="qwen2_vl"))
    encoded = []
    for sample in json.loads(dataset.read_text()):
        images = [str(dataset.parent / p) for p in sample["images"]]
        messages = template.mm_plugin.process_messages(
            sample["conversations"], images, [], [], processor
        )
        ((source, target),) = template.encode_multiturn(tokenizer, messages, None, None)
        encoded.append((len(source), len(target)))
    assert encoded == list(zip(lengths["prompt_tokens"], lengths["target_tokens"], strict=True))


def test_summary_warns_naming_how_many_samples_are_truncated(lengths, caplog):
    cutoff = int(lengths["total_tokens"][1]) + 1  # a56 and b112 fit, c224 and d448 do not
    with caplog.at_level(logging.WARNING, logger="geolocsft.sft.token_stats"):
        stats = summarize(lengths, cutoff_len=cutoff)
    assert stats["samples"] == 4 and stats["cutoff_len"] == cutoff
    over = stats["over_cutoff"]
    assert over["count"] == 2 and over["share"] == 0.5
    assert set(over["sample_ids"]) == {"c224", "d448"}
    assert {w["sample_id"] for w in over["worst"]} == {"c224", "d448"}
    assert all(w["over_by"] > 0 for w in over["worst"])
    total = stats["total_tokens"]
    assert total["min"] <= total["median"] <= total["p90"] <= total["p99"] <= total["max"]
    assert total["max"] == lengths["total_tokens"].max()
    assert stats["image_tokens"]["max"] == 64
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 of 4 samples are longer than cutoff_len" in record.getMessage()
    assert "d448" in record.getMessage() and "will truncate" in record.getMessage()


def test_no_warning_when_every_sample_fits(lengths, caplog):
    with caplog.at_level(logging.WARNING, logger="geolocsft.sft.token_stats"):
        stats = summarize(lengths, cutoff_len=2048)
    assert stats["over_cutoff"]["count"] == 0 and stats["over_cutoff"]["sample_ids"] == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_fail_mode_raises_naming_the_samples(lengths):
    cutoff = int(lengths["total_tokens"][1])  # c224 and d448 (as many tokens) are too long
    with pytest.raises(GeolocsftError, match=r"2 of 4 samples.*c224 \(\d+ tokens\), d448"):
        summarize(lengths, cutoff_len=cutoff, on_truncation="fail")
    with pytest.raises(GeolocsftError, match="not 'warn' or 'fail'"):
        summarize(lengths, cutoff_len=cutoff, on_truncation="ignore")  # type: ignore[arg-type]


def test_a_cut_through_the_image_tokens_is_flagged(lengths):
    d448 = lengths.row(3, named=True)
    # the answer is kept whole and the prompt's end is cut, down into the image tokens
    cutoff = d448["target_tokens"] + d448["image_end"] - 10
    stats = summarize(lengths, cutoff_len=cutoff)
    assert "d448" in stats["over_cutoff"]["image_tokens_cut_ids"]
    assert stats["over_cutoff"]["image_tokens_cut"] == 2  # c224 has as many tokens
    (worst,) = [w for w in stats["over_cutoff"]["worst"] if w["sample_id"] == "d448"]
    assert worst["image_tokens_cut"] is True
    assert worst["answer_tokens_cut"] == 0 and worst["prompt_tokens_cut"] > 0
    # one token too long: only the end of the prompt goes, the image tokens stay
    barely = summarize(lengths, cutoff_len=d448["total_tokens"] - 1)["over_cutoff"]
    assert barely["image_tokens_cut"] == 0 and barely["worst"][-1]["prompt_tokens_cut"] == 1


def test_kept_lengths_follow_llamafactory_truncation():
    pytest.importorskip("llamafactory")
    from llamafactory.data.processor.processor_utils import infer_seqlen

    for source in (10, 100, 700, 3000):
        for target in (5, 300, 1500):
            for cutoff in (64, 1024, 2048):
                assert kept_lengths(source, target, cutoff) == infer_seqlen(source, target, cutoff)


def test_missing_image_is_named(dataset, tiny_model, tmp_path):
    samples = json.loads(dataset.read_text())
    samples[1]["images"] = ["media/gone.jpg"]
    broken = tmp_path / "geo.json"
    broken.write_text(json.dumps(samples))
    with pytest.raises(GeolocsftError, match=r"sample 1 \(gone\): image .*gone\.jpg"):
        token_lengths(broken, dataset.parent, tiny_model, 50_176, progress=False)


def test_histogram_is_written(lengths, tmp_path):
    path = plot_lengths(lengths, 100, tmp_path / "lengths.png", "run r")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_counts_are_memoized_per_sample_and_split_into_parts(
    dataset, tiny_model, lengths, tmp_path
):
    """A reused count equals a fresh one; a grown dataset counts only its new samples; parts
    together count every sample once."""
    memo = tmp_path / "memo"
    samples = json.loads(dataset.read_text())
    first_two = tmp_path / "geo.json"
    first_two.write_text(json.dumps(samples[:2]))
    counted = token_lengths(
        first_two, dataset.parent, tiny_model, PROCESSOR_MAX_PIXELS, progress=False, memo_dir=memo
    )
    assert counted.to_dicts() == lengths.head(2).to_dicts()
    calls = []
    original = token_stats.sample_lengths

    def counting(*args, **kwargs):
        calls.append(args[1]["images"][0])
        return original(*args, **kwargs)

    token_stats.sample_lengths = counting
    try:
        grown = token_lengths(
            dataset, dataset.parent, tiny_model, PROCESSOR_MAX_PIXELS, progress=False, memo_dir=memo
        )
        parts = [
            token_lengths(
                dataset,
                dataset.parent,
                tiny_model,
                PROCESSOR_MAX_PIXELS,
                progress=False,
                memo_dir=memo,
                part=(part, 3),
            )
            for part in range(3)
        ]
    finally:
        token_stats.sample_lengths = original
    assert calls == [s["images"][0] for s in samples[2:]]  # only the two new samples
    assert grown.to_dicts() == lengths.to_dicts()
    assert pl.concat(parts).sort("index").to_dicts() == lengths.to_dicts()
    # Another image resize is another memo version: nothing is reused from the first.
    other = token_lengths(
        first_two, dataset.parent, tiny_model, 112 * 112, progress=False, memo_dir=memo
    )
    assert other["image_tokens"].to_list() == [4, 16]
