"""The one image preparation of the workflow: decode, upright 8-bit RGB, shrink, encode.

Every stage that shows a photo to a model goes through here, so that a photo gives the same
pixels wherever it is used:

* the SFT dataset's media files are :func:`prepared_jpeg` of the original (sft_dataset);
* LLaMA-Factory resizes a media image to the run's ``image_max_pixels`` before its processor
  (:func:`fit_to_model` is that resize), in training and in the token-length check;
* at inference, :func:`model_input_image` gives the model the same pixels: the original,
  prepared and encoded exactly as the media file was, decoded, then fitted like in training;
* the caption API gets :func:`prepared_jpeg` of the original under the caption settings.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geolocsft.errors import BadImageError

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".jfif"}
)
#: Modes that are not 8-bit per channel (16-bit or 32-bit greyscale, float): models want 8-bit RGB.
HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: LLaMA-Factory's default ``image_min_pixels``.
IMAGE_MIN_PIXELS = 32 * 32
#: Qwen2-VL's smallest side: LLaMA-Factory's plugin enlarges thinner images to it.
MIN_SIDE_PX = 28
JPEG_MIME_TYPE = "image/jpeg"


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class ImagePreparation:
    """How a photo is shrunk and encoded before a model sees it.

    ``max_side`` bounds the longest side, ``max_pixels`` the area (``None``: no area bound), and
    the result is an RGB JPEG of ``jpeg_quality``.
    """

    max_side: int
    max_pixels: int | None
    jpeg_quality: int


def to_rgb8(image: Image) -> Image:
    """An 8-bit RGB copy of a Pillow image; 16-bit greyscale is rescaled, not clipped."""
    from PIL import Image as PILImage

    if image.mode in HIGH_BIT_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        low, high = np.nanpercentile(pixels, [0.5, 99.5]) if pixels.size else (0.0, 1.0)
        scale = 255.0 / (high - low) if high > low else 1.0
        grey = np.clip((pixels - low) * scale, 0, 255).astype(np.uint8)
        return PILImage.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def open_upright_rgb(path: Path, draft_px: int | None = None) -> Image:
    """A photo as 8-bit RGB, turned upright by its EXIF orientation.

    ``draft_px``: a JPEG may be decoded at a reduced scale (1/2, 1/4 or 1/8, libjpeg's DCT
    scaling) as long as both sides stay at least this many pixels; for work that looks at a
    small version of the photo only. Pillow's own pixel limit is lifted: the stages read only
    images that ingest accepted under ``ingest.max_image_pixels``, which may be set above
    Pillow's default.
    """
    from PIL import Image as PILImage
    from PIL import ImageOps

    PILImage.MAX_IMAGE_PIXELS = None
    try:
        with PILImage.open(path) as opened:
            if draft_px is not None:
                opened.draft("RGB", (draft_px, draft_px))
            # Loads the pixels and turns them in place: no copy of an already upright photo.
            ImageOps.exif_transpose(opened, in_place=True)
            return opened if opened.mode == "RGB" else to_rgb8(opened)
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"{path}: cannot decode the image: {exc}") from exc


def shrink(image: Image, max_side: int, max_pixels: int | None) -> Image:
    """``image`` with its longest side at most ``max_side`` and at most ``max_pixels`` pixels."""
    from PIL import Image as PILImage

    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    pixels = image.width * image.height
    if max_pixels is not None and pixels > max_pixels:
        scale = (max_pixels / pixels) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        image = image.resize(size, PILImage.Resampling.LANCZOS)
    return image


def encode_jpeg(image: Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def prepared_jpeg(path: Path, preparation: ImagePreparation) -> bytes:
    """The photo at ``path`` as the model's input file: upright RGB, shrunk, JPEG-encoded."""
    image = shrink(open_upright_rgb(path), preparation.max_side, preparation.max_pixels)
    return encode_jpeg(image, preparation.jpeg_quality)


def decode(data: bytes) -> Image:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as opened:
        return opened.convert("RGB")


def fit_to_model(image: Image, max_pixels: int, min_pixels: int = IMAGE_MIN_PIXELS) -> Image:
    """LLaMA-Factory's resize before its processor (``image_max_pixels``/``image_min_pixels``,
    then Qwen2-VL's smallest side), so that inference sees training's pixels."""
    pixels = image.width * image.height
    if pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
        image = image.resize((int(image.width * scale), int(image.height * scale)))
    pixels = image.width * image.height
    if pixels < min_pixels:
        scale = math.sqrt(min_pixels / pixels)
        image = image.resize((int(image.width * scale), int(image.height * scale)))
    if min(image.width, image.height) < MIN_SIDE_PX:
        image = image.resize((max(image.width, MIN_SIDE_PX), max(image.height, MIN_SIDE_PX)))
    return image.convert("RGB")


def load_for_model(path: Path, max_pixels: int, min_pixels: int = IMAGE_MIN_PIXELS) -> Image:
    """A prepared image file (a dataset media file) as the model sees it in training."""
    from PIL import Image as PILImage

    with PILImage.open(path) as opened:
        return fit_to_model(opened.convert("RGB"), max_pixels, min_pixels)


def model_input_image(path: Path, preparation: ImagePreparation, max_pixels: int) -> Image:
    """An original photo as the model sees it at inference: the pixels training would see.

    The photo is prepared and encoded exactly as its media file would be, decoded, then fitted
    to the run's ``image_max_pixels`` like LLaMA-Factory does.
    """
    return fit_to_model(decode(prepared_jpeg(path, preparation)), max_pixels)
