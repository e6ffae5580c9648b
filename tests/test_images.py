"""One image preparation: a photo gives the same pixels in training and at inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from conftest import write_photo
from PIL import Image

from geolocsft.images import fit_to_model, load_for_model, model_input_image
from geolocsft.memo import BlobStore
from geolocsft.settings import configured
from geolocsft.sft.dataset import IMAGE_SCHEMA, DatasetSettings, image_preparation, prepare_media


def write_media_image(photo: Path, media: Path, dataset: DatasetSettings) -> None:
    """The media file of ``photo`` exactly as sft_dataset makes it (memoized preparation)."""
    memo = media.parent / "memo"
    source = {"image_id": "photo", "path": str(photo), "sha256": "sha-of-" + photo.name}
    images = pl.DataFrame(
        [{**source, "lat": 0.0, "lon": 0.0, "caption_path": None, "caption_sha256": None}],
        IMAGE_SCHEMA,
    )
    prepared, _ = prepare_media(images, dataset, memo, progress=False)
    BlobStore(memo).link(prepared["media_sha256"][0], media)


def test_a_4000x3000_photo_gives_the_same_pixels_in_training_and_at_inference(tmp_path: Path):
    photo = write_photo(tmp_path / "big.jpg", seed=3, size=(4000, 3000))
    dataset = configured(DatasetSettings, name="geo")  # 768 px longest side, JPEG 90
    run_max_pixels = 589_824
    # Training: the media file sft_dataset writes, then LLaMA-Factory's resize of it.
    media = tmp_path / "media" / "big.jpg"
    write_media_image(photo, media, dataset)
    with Image.open(media) as written:
        assert written.size == (768, 576)
    training = load_for_model(media, run_max_pixels)
    # Inference: the original photo, prepared by the predictor.
    inference = model_input_image(photo, image_preparation(dataset), run_max_pixels)
    assert inference.size == training.size == (768, 576)
    assert np.array_equal(np.asarray(inference), np.asarray(training))


def test_the_run_resize_applies_after_the_dataset_preparation(tmp_path: Path):
    photo = write_photo(tmp_path / "big.png", seed=4, size=(4000, 3000))
    dataset = configured(DatasetSettings, name="geo")
    media = tmp_path / "big.jpg"
    write_media_image(photo, media, dataset)
    training = load_for_model(media, 50_176)  # the demo run's image_max_pixels
    inference = model_input_image(photo, image_preparation(dataset), 50_176)
    assert training.width * training.height <= 50_176
    assert np.array_equal(np.asarray(inference), np.asarray(training))


def test_images_are_fitted_like_llamafactory_does():
    big = fit_to_model(Image.new("RGB", (2000, 1000)), max_pixels=50_176)
    assert big.width * big.height <= 50_176 and big.width == 2 * big.height
    tiny = fit_to_model(Image.new("L", (10, 5)), max_pixels=50_176)
    assert tiny.mode == "RGB" and min(tiny.size) >= 28
