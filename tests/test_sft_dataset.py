"""The LLaMA-Factory dataset built from caption files, with memoized media."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import write_16bit_tiff, write_photo
from PIL import Image

from geolocsft.answers import parse_answer
from geolocsft.captions.schema import GeoCaption
from geolocsft.errors import GeolocsftError
from geolocsft.io import file_sha256, json_bytes
from geolocsft.layout import shard_of
from geolocsft.parallel import MIN_ITEMS_FOR_WORKERS
from geolocsft.settings import configured
from geolocsft.sft import dataset as dataset_module
from geolocsft.sft.dataset import (
    DatasetSettings,
    assistant_text,
    build_dataset,
    images_of_part,
    new_items,
    prepare_media,
    select_images,
    write_samples,
)
from geolocsft.testing.standin import caption_for

#: The captioner's answer is off the truth (within the flag distance): training uses the truth.
TRUTH = {"a@N00": (10.0, 20.0), "b": (11.0, 21.0), "grey": (12.0, 22.0), "far": (13.0, 23.0)}


def caption_file(folder: Path, image_id: str, lat: float, lon: float, thinking: bool) -> None:
    caption = caption_for(lat + 0.05, lon - 0.05)
    if not thinking:
        caption["thinking"] = None
    folder.mkdir(parents=True, exist_ok=True)
    document = {"image_id": image_id, "caption": caption}
    (folder / f"{image_id}.json").write_text(json.dumps(document))


def manifest_of(images: dict[str, Path], split: dict[str, str] | None = None) -> pl.DataFrame:
    ids = list(images)
    return pl.DataFrame(
        {
            "image_id": ids,
            "path": [str(images[i]) for i in ids],
            "sha256": [file_sha256(images[i]) for i in ids],
            "lat": [TRUTH.get(i, (1.0, 1.0))[0] for i in ids],
            "lon": [TRUTH.get(i, (1.0, 1.0))[1] for i in ids],
            "split": [(split or {}).get(i, "train") for i in ids],
        }
    )


def index_of(ids: list[str], status: dict[str, str] | None = None) -> pl.DataFrame:
    status = status or {}
    return pl.DataFrame(
        {
            "image_id": ids,
            "status": [status.get(i, "captioned") for i in ids],
            "flagged": [i == "far" for i in ids],
            "failure_reason": [None if status.get(i) is None else "malformed_json" for i in ids],
        }
    )


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[pl.DataFrame, pl.DataFrame, Path]:
    images = tmp_path / "images"
    paths = {
        "a@N00": write_photo(images / "a.jpg", size=(1200, 800)),
        "b": write_photo(images / "b.png", seed=2),
        "grey": write_16bit_tiff(images / "grey.tif"),
        "far": write_photo(images / "far.jpg", seed=3),
        "broken": write_photo(images / "broken.jpg", seed=4),
        "held": write_photo(images / "held.jpg", seed=5),
    }
    manifest = manifest_of(paths, split={"held": "test"})
    captions = tmp_path / "captions"
    for image_id in ("a@N00", "b", "grey", "far", "held"):
        caption_file(captions, image_id, *TRUTH.get(image_id, (1.0, 1.0)), thinking=True)
    index = index_of(["a@N00", "b", "grey", "far", "broken", "held"], {"broken": "failed"})
    return manifest, index, captions


def build(corpus, out: Path, memo: Path, **settings: object) -> dict:
    manifest, index, captions = corpus
    options = {"name": "geo", "image_max_side": 256, **settings}
    return build_dataset(
        manifest,
        index,
        captions,
        "Where?\n",
        configured(DatasetSettings, **options),
        out,
        memo_dir=memo,
        progress=False,
    )


def test_dataset_files_follow_llamafactory_sharegpt(corpus, tmp_path):
    out = tmp_path / "sft"
    stats = build(corpus, out, tmp_path / "memo")
    samples = json.loads((out / "geo.json").read_text())
    assert [s["images"] for s in samples] == [
        [f"media/{shard_of(i)}/{i}.jpg"] for i in ("a@N00", "b", "grey")
    ]
    for sample, image_id in zip(samples, ("a@N00", "b", "grey"), strict=True):
        user, assistant = sample["conversations"]
        assert user == {"role": "user", "content": "<image>Where?"}
        assert assistant["role"] == "assistant"
        caption = GeoCaption.model_validate(json.loads(assistant["content"]))  # the full caption
        truth = TRUTH[image_id]
        assert (caption.answer.coordinates.latitude, caption.answer.coordinates.longitude) == truth
        parsed = parse_answer(assistant["content"], "caption")
        assert (parsed.lat, parsed.lon, parsed.status) == (*truth, "json")
        with Image.open(out / sample["images"][0]) as image:
            assert image.mode == "RGB" and image.format == "JPEG" and max(image.size) <= 256
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["geo"]["formatting"] == "sharegpt"
    assert info["geo"]["columns"] == {"messages": "conversations", "images": "images"}
    assert info["geo"]["tags"]["assistant_tag"] == "assistant"
    # Only the train split is used: 'held' (test split) never becomes a training sample.
    assert stats["skipped"] == {
        "caption_malformed_json": 1,
        "flagged_caption": 1,
        "not_in_train_split": 1,
    }
    index = pl.read_parquet(out / "media_sha256.parquet")
    for path, digest in index.iter_rows():
        assert file_sha256(out / path) == digest


def test_excluded_images_are_left_out(corpus, tmp_path):
    manifest, index, _ = corpus
    settings = configured(DatasetSettings, name="geo")
    chosen = select_images(manifest, index, settings, frozenset({"b"}))
    assert chosen.images["image_id"].to_list() == ["a@N00", "grey"]
    assert chosen.skipped["in_an_eval_set"] == 1


def test_a_reused_media_file_is_byte_identical_and_only_new_images_are_prepared(corpus, tmp_path):
    memo = tmp_path / "memo"
    manifest, index, _ = corpus
    settings = configured(DatasetSettings, name="geo", image_max_side=256)
    images = select_images(manifest, index, settings).images
    _, prepared = prepare_media(images.head(2), settings, memo, progress=False)
    assert prepared == 2
    table, prepared = prepare_media(images, settings, memo, progress=False)  # one more image
    assert prepared == 1 and table.height == 3
    build(corpus, tmp_path / "reused", memo)
    build(corpus, tmp_path / "fresh", tmp_path / "empty-memo")  # everything prepared anew
    for name in ("geo.json", "dataset_info.json", "stats.json"):
        assert (tmp_path / "reused" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    for sample in json.loads((tmp_path / "reused" / "geo.json").read_text()):
        (path,) = sample["images"]
        assert (tmp_path / "reused" / path).read_bytes() == (tmp_path / "fresh" / path).read_bytes()
    # Another preparation is another memo entry, never a stale reuse.
    _, prepared = prepare_media(images, configured(DatasetSettings, name="geo"), memo)
    assert prepared == 3


def test_media_prepared_in_parts_give_the_same_dataset(corpus, tmp_path):
    manifest, index, _ = corpus
    settings = configured(DatasetSettings, name="geo", image_max_side=256)
    images = select_images(manifest, index, settings).images
    parts = [images_of_part(images, part, 3) for part in range(3)]
    assert sorted(i for p in parts for i in p["image_id"]) == sorted(images["image_id"])
    memo = tmp_path / "memo"
    tables = [prepare_media(p, settings, memo, progress=False)[0] for p in parts]
    manifest, index, captions = corpus
    build_dataset(
        manifest,
        index,
        captions,
        "Where?\n",
        settings,
        tmp_path / "gathered",
        memo_dir=memo,
        prepared=pl.concat(tables),
    )
    build(corpus, tmp_path / "one-job", tmp_path / "memo2")
    for name in ("geo.json", "media_sha256.parquet"):
        gathered = (tmp_path / "gathered" / name).read_bytes()
        assert gathered == (tmp_path / "one-job" / name).read_bytes()
    with pytest.raises(GeolocsftError, match="parts hold no file for 1 image"):
        build_dataset(
            manifest,
            index,
            captions,
            "Where?\n",
            settings,
            tmp_path / "missing",
            memo_dir=memo,
            prepared=(
                pl.concat(tables[:1] + tables[2:]) if parts[1].height else pl.concat(tables[1:])
            ),
        )


def test_flagged_captions_can_be_included_and_validation_split_is_stable(corpus, tmp_path):
    memo = tmp_path / "memo"
    options = {"include_flagged": True, "validation_fraction": 0.5}
    first = build(corpus, tmp_path / "one", memo, **options)
    second = build(corpus, tmp_path / "two", memo, **options)
    assert first == second
    assert first["samples"] == 4 and first["train"] + first["validation"] == 4
    for name in ("geo.json", "geo_val.json", "dataset_info.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert "geo_val" in json.loads((tmp_path / "one" / "dataset_info.json").read_text())


def test_targets_carry_the_true_coordinates():
    caption = GeoCaption.model_validate(caption_for(1.7, -2.1))  # the captioner's answer
    assert json.loads(assistant_text(caption, "coordinates", 1.5, -2.25, "x")) == {
        "latitude": 1.5,
        "longitude": -2.25,
    }
    answer = json.loads(assistant_text(caption, "answer", 1.5, -2.25, "x"))
    assert set(answer) == {"answer"}
    assert answer["answer"]["coordinates"] == {
        "latitude": 1.5,
        "longitude": -2.25,
        "region": "stand-in region",
    }
    full = json.loads(assistant_text(caption, "full", 1.5, -2.25, "x"))
    assert list(full) == ["thinking", "answer"]  # reasoning first, then the answer
    assert full["thinking"] == caption_for(1.7, -2.1)["thinking"]
    assert full["answer"]["coordinates"]["latitude"] == 1.5
    no_reasoning = caption.model_copy(update={"thinking": None})
    with pytest.raises(GeolocsftError, match="no reasoning"):
        assistant_text(no_reasoning, "full", 1.5, -2.25, "x")


def test_a_large_dataset_is_the_same_built_in_worker_processes_and_a_bad_caption_is_named(
    tmp_path, monkeypatch
):
    """With enough images, captions are read and media prepared in worker processes."""
    count = MIN_ITEMS_FOR_WORKERS + 6
    ids = [f"img{i:03d}" for i in range(count)]
    images = {i: write_photo(tmp_path / "images" / f"{i}.jpg", seed=n) for n, i in enumerate(ids)}
    captions = tmp_path / "captions"
    for image_id in ids:
        caption_file(captions, image_id, 1.0, 1.0, thinking=True)
    manifest, index = manifest_of(images), index_of(ids)
    settings = configured(DatasetSettings, name="geo", target="full", image_max_side=64)

    def made(out: str, workers: int) -> Path:
        build_dataset(
            manifest, index, captions, "Where?\n", settings, tmp_path / out,
            memo_dir=tmp_path / f"memo-{out}", progress=False, workers=workers,
        )  # fmt: skip
        return tmp_path / out

    here, there = made("one-process", 1), made("workers", 2)
    # Samples are made a block at a time: a last block of 4 (read here) after one of 66
    # (read in workers) gives the same dataset.
    monkeypatch.setattr(dataset_module, "SAMPLE_BLOCK", MIN_ITEMS_FOR_WORKERS + 2)
    in_blocks = made("blocks", 2)
    for name in ("geo.json", "media_sha256.parquet", "stats.json"):
        assert (here / name).read_bytes() == (there / name).read_bytes()
        assert (here / name).read_bytes() == (in_blocks / name).read_bytes()
    assert len(json.loads((there / "geo.json").read_text())) == count
    (captions / "img042.json").write_text('{"image_id": "img042", "caption": {"answer": 1}}')
    with pytest.raises(GeolocsftError, match=r"img042\.json: not a readable geo-caption file"):
        made("broken", 2)
    # Samples are written as they are read: a failed build leaves no dataset file, whole or
    # partial, and no media were prepared for it (the captions are checked first).
    assert not [p.name for p in (tmp_path / "broken").iterdir()]
    assert not (tmp_path / "memo-broken").exists()


@pytest.mark.parametrize(
    "text", ["plain", "ünïcødé 漢字 😀", 'quo"te \\ back', "new\nline\ttab\r", "\x00\x1f", "\u2028"]
)
def test_dataset_files_are_the_bytes_of_indented_json_whatever_the_strings(tmp_path, text):
    """The fast writer must give json.dumps(indent=1)'s bytes: a run's fingerprint holds them."""
    turns = [{"role": "user", "content": f"<image>{text}"}, {"role": "assistant", "content": text}]
    samples = [
        {"conversations": turns, "images": [f"media/ab/{text}.jpg"]},
        {"conversations": turns[:1], "images": ["a.jpg", "b.jpg"]},
        {"conversations": [{**turns[0], "extra": 1}], "images": ["x"]},  # another shape
        {"images": ["x"], "conversations": []},
    ]
    for chosen in (samples, samples[:1], []):
        write_samples(tmp_path / "geo.json", chosen)
        expected = json_bytes(chosen, indent=1, sort_keys=False)
        assert (tmp_path / "geo.json").read_bytes() == expected


def test_new_items_counts_the_media_and_caption_files_a_build_would_do_anew(tmp_path):
    """What the dataset job's thread count is chosen from (rules/sft.smk: one thread when few
    images are new): the media not in the memo and the caption files whose text is not."""
    captions = tmp_path / "captions"
    ids = [f"i{n}" for n in range(4)]
    images = {i: write_photo(tmp_path / "images" / f"{i}.jpg", seed=n) for n, i in enumerate(ids)}
    for image_id in ids:
        caption_file(captions, image_id, 1.0, 1.0, thinking=True)

    def hashed_index(image_ids: list[str]) -> pl.DataFrame:
        hashes = [file_sha256(captions / f"{i}.json") for i in image_ids]
        return index_of(image_ids).with_columns(pl.Series("caption_sha256", hashes))

    settings = configured(DatasetSettings, name="geo", target="full")
    memo = tmp_path / "memo"
    every = manifest_of(images)
    assert new_items(every, hashed_index(ids), settings, memo) == 4  # an empty memo
    build_dataset(
        manifest_of({i: images[i] for i in ids[:3]}), hashed_index(ids[:3]), captions,
        "Where?\n", settings, tmp_path / "out", memo_dir=memo, progress=False, workers=1,
    )  # fmt: skip
    assert new_items(every, hashed_index(ids), settings, memo) == 1  # i3: its media and text
    caption_file(captions, "i0", 2.0, 2.0, thinking=True)  # a caption that changed
    assert new_items(every, hashed_index(ids), settings, memo) == 2  # the texts of i0 and i3
    assert new_items(every, index_of(ids), settings, memo) == 4  # no hashes: every file is read
    assert new_items(every, hashed_index(ids), settings, memo, excluded_ids={"i3"}) == 1


def test_a_rebuild_reads_only_caption_files_it_has_not_seen(tmp_path, monkeypatch):
    """With each caption file's sha256 in the index, a sample's text is reused from the memo:
    adding an image and changing one caption reads those two files; the dataset is the bytes
    of one built from scratch, and of one from an index without hashes (every file read)."""
    read: list[str] = []
    real = dataset_module._assistant_text_of_file

    def counted(caption_file: tuple[str, float, float], target: str) -> str:
        read.append(Path(caption_file[0]).stem)
        return real(caption_file, target)  # type: ignore[arg-type]

    monkeypatch.setattr(dataset_module, "_assistant_text_of_file", counted)
    captions = tmp_path / "captions"
    ids = [f"i{n}" for n in range(6)]
    images = {i: write_photo(tmp_path / "images" / f"{i}.jpg", seed=n) for n, i in enumerate(ids)}
    for image_id in ids:
        caption_file(captions, image_id, 1.0, 1.0, thinking=True)

    def made(out: str, image_ids: list[str], memo: str, hashed: bool = True, **options) -> Path:
        index = index_of(image_ids)
        if hashed:
            index = index.with_columns(
                pl.Series([file_sha256(captions / f"{i}.json") for i in image_ids]).alias(
                    "caption_sha256"
                )
            )
        settings = configured(DatasetSettings, name="geo", **{"target": "full", **options})
        build_dataset(
            manifest_of({i: images[i] for i in image_ids}), index, captions, "Where?\n",
            settings, tmp_path / out, memo_dir=tmp_path / memo, progress=False, workers=1,
        )  # fmt: skip
        return tmp_path / out

    made("first", ids[:5], "memo")
    assert sorted(read) == ids[:5]
    read.clear()
    caption_file(captions, "i2", 3.0, 4.0, thinking=True)  # a caption that changed
    again = made("again", ids, "memo")
    assert sorted(read) == ["i2", "i5"]
    read.clear()
    fresh, unhashed = made("fresh", ids, "memo-fresh"), made("unhashed", ids, "memo", hashed=False)
    assert sorted(read) == sorted(ids + ids)  # a fresh memo, and an index without hashes: all read
    for name in ("geo.json", "stats.json"):
        assert (again / name).read_bytes() == (fresh / name).read_bytes()
        assert (again / name).read_bytes() == (unhashed / name).read_bytes()
    read.clear()
    made("answer", ids, "memo", target="answer")  # another target: other texts
    assert sorted(read) == ids
