"""The LLaMA-Factory dataset built from caption files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import write_16bit_tiff, write_photo
from PIL import Image

from geolocsft.errors import GeolocsftError
from geolocsft.settings import configured
from geolocsft.sft.dataset import DatasetSettings, assistant_text, build_dataset
from geolocsft.testing.standin import caption_for


def caption_file(folder: Path, image_id: str, lat: float, lon: float, thinking: bool) -> None:
    caption = caption_for(lat, lon)
    if not thinking:
        caption["thinking"] = None
    folder.mkdir(parents=True, exist_ok=True)
    document = {"image_id": image_id, "caption": caption}
    (folder / f"{image_id}.json").write_text(json.dumps(document))


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[pl.DataFrame, pl.DataFrame, Path]:
    images = tmp_path / "images"
    paths = {
        "a@N00": write_photo(images / "a.jpg", size=(1200, 800)),
        "b": write_photo(images / "b.png", seed=2),
        "grey": write_16bit_tiff(images / "grey.tif"),
        "far": write_photo(images / "far.jpg", seed=3),
        "broken": write_photo(images / "broken.jpg", seed=4),
    }
    manifest = pl.DataFrame({"image_id": list(paths), "path": [str(p) for p in paths.values()]})
    captions = tmp_path / "captions"
    for image_id in ("a@N00", "b", "grey", "far"):
        caption_file(captions, image_id, 10.0, 20.0, thinking=True)
    index = pl.DataFrame(
        {
            "image_id": ["a@N00", "b", "grey", "far", "broken"],
            "status": ["captioned"] * 4 + ["failed"],
            "flagged": [False, False, False, True, None],
            "failure_reason": [None] * 4 + ["malformed_json"],
        }
    )
    return manifest, index, captions


def test_dataset_files_follow_llamafactory_sharegpt(corpus, tmp_path):
    manifest, index, captions = corpus
    out = tmp_path / "sft"
    stats = build_dataset(
        manifest,
        index,
        captions,
        "Where?\n",
        configured(DatasetSettings, name="geo", image_max_side=256),
        out,
    )
    samples = json.loads((out / "geo.json").read_text())
    assert [s["images"] for s in samples] == [
        ["media/a@N00.jpg"],
        ["media/b.jpg"],
        ["media/grey.jpg"],
    ]
    for sample in samples:
        user, assistant = sample["conversations"]
        assert user == {"role": "user", "content": "<image>Where?"}
        assert assistant["role"] == "assistant"
        assert json.loads(assistant["content"])["answer"]["coordinates"]["latitude"] == 10.0
        with Image.open(out / sample["images"][0]) as image:
            assert image.mode == "RGB" and image.format == "JPEG" and max(image.size) <= 256
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["geo"]["formatting"] == "sharegpt"
    assert info["geo"]["columns"] == {"messages": "conversations", "images": "images"}
    assert info["geo"]["tags"]["assistant_tag"] == "assistant"
    assert stats["skipped"] == {"caption_malformed_json": 1, "flagged_caption": 1}


def test_flagged_captions_can_be_included_and_validation_split_is_stable(corpus, tmp_path):
    manifest, index, captions = corpus
    settings = configured(
        DatasetSettings, name="geo", include_flagged=True, validation_fraction=0.5
    )
    first = build_dataset(manifest, index, captions, "Where?", settings, tmp_path / "one")
    second = build_dataset(manifest, index, captions, "Where?", settings, tmp_path / "two")
    assert first == second
    assert first["samples"] == 4 and first["train"] + first["validation"] == 4
    for name in ("geo.json", "geo_val.json", "dataset_info.json", "media/a@N00.jpg"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert "geo_val" in json.loads((tmp_path / "one" / "dataset_info.json").read_text())


def test_targets():
    document = {"image_id": "x", "caption": caption_for(1.5, -2.25)}
    assert json.loads(assistant_text(document, "coordinates")) == {
        "latitude": 1.5,
        "longitude": -2.25,
    }
    assert set(json.loads(assistant_text(document, "answer"))) == {"answer"}
    assert set(json.loads(assistant_text(document, "full"))) == {"thinking", "answer"}
    document["caption"]["thinking"] = None
    with pytest.raises(GeolocsftError, match="no reasoning"):
        assistant_text(document, "full")
