"""Answers of a fine-tuned (or base) vision-language model for benchmark images.

Backend ``transformers``: the base model plus the LoRA adapter, on the GPU when torch sees one,
else on the CPU. Each answer is parsed by :func:`geolocsft.answers.parse_answer`; a row keeps the
raw answer and the parse status, and an unparseable answer is a row with empty coordinates (the
evaluator counts it as a miss), never a dropped row. With ``samples > 1`` the model answers k
times (sampling) and the prediction is the geodesic medoid of the parseable answers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from geolocsft.answers import parse_answer
from geolocsft.geo import geodesic_medoid_index

log = logging.getLogger(__name__)

PREDICTION_SCHEMA = {
    "image_id": pl.String,
    "pred_lat": pl.Float64,
    "pred_lon": pl.Float64,
    "true_lat": pl.Float64,
    "true_lon": pl.Float64,
    "raw_answer": pl.String,
    "parse_status": pl.String,
    "answers_parsed": pl.Int64,
}


@dataclass(frozen=True)
class PredictSettings:
    """How a run answers (``sft.runs.<run>.predict`` in config)."""

    instruction: str
    image_max_pixels: int = 589_824
    max_new_tokens: int = 1024
    samples: int = 1
    temperature: float = 0.7
    seed: int = 0


def fit_image(image: Any, max_pixels: int, min_pixels: int = 32 * 32) -> Any:
    """Resize as LLaMA-Factory does before its processor, so inference sees training's grid."""
    pixels = image.width * image.height
    if pixels > max_pixels:
        scale = math.sqrt(max_pixels / pixels)
        image = image.resize((int(image.width * scale), int(image.height * scale)))
    pixels = image.width * image.height
    if pixels < min_pixels:
        scale = math.sqrt(min_pixels / pixels)
        image = image.resize((int(image.width * scale), int(image.height * scale)))
    if min(image.width, image.height) < 28:
        image = image.resize((max(image.width, 28), max(image.height, 28)))
    return image.convert("RGB")


def aggregate(answers: Sequence[str]) -> tuple[float | None, float | None, str, int]:
    """One prediction from k answers: the geodesic medoid of those that parse."""
    parsed = [parse_answer(a) for a in answers]
    usable = [p for p in parsed if p.lat is not None and p.lon is not None]
    if not usable:
        return None, None, "unparseable", 0
    if len(usable) == 1:
        return usable[0].lat, usable[0].lon, usable[0].status, 1
    lat = np.array([p.lat for p in usable], dtype=np.float64)
    lon = np.array([p.lon for p in usable], dtype=np.float64)
    best = geodesic_medoid_index(lat, lon)
    return float(lat[best]), float(lon[best]), f"medoid_of_{len(usable)}", len(usable)


class TransformersPredictor:
    """Base model + optional LoRA adapter with Hugging Face transformers (GPU if available)."""

    def __init__(self, base_model: Path, adapter: Path | None, settings: PredictSettings) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.settings = settings
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.processor = AutoProcessor.from_pretrained(base_model)
        model: Any = AutoModelForImageTextToText.from_pretrained(base_model, dtype=dtype)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        self.model = model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        self.stop_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.pad_id = tokenizer.pad_token_id

    def answers(self, image_path: Path) -> list[str]:
        from PIL import Image, ImageOps

        from geolocsft.ingest import to_rgb8

        with Image.open(image_path) as opened:
            image = fit_image(
                to_rgb8(ImageOps.exif_transpose(opened)), self.settings.image_max_pixels
            )
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": self.settings.instruction.strip()},
                ],
            }
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=[image], return_tensors="pt").to(self.device)
        sampling = self.settings.samples > 1
        self.torch.manual_seed(self.settings.seed)
        with self.torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.settings.max_new_tokens,
                do_sample=sampling,
                temperature=self.settings.temperature if sampling else None,
                top_p=None,
                top_k=None,
                num_return_sequences=self.settings.samples,
                eos_token_id=self.stop_ids,
                pad_token_id=self.pad_id,
            )
        prompt_length = inputs["input_ids"].shape[1]
        return [
            self.processor.tokenizer.decode(sequence[prompt_length:], skip_special_tokens=True)
            for sequence in output
        ]


def predict(
    predictor: TransformersPredictor, targets: pl.DataFrame, progress: bool = True
) -> pl.DataFrame:
    """One row per target image (test split of a manifest), in the prediction table's columns."""
    rows = []
    for row in tqdm(
        targets.iter_rows(named=True),
        total=targets.height,
        desc="predicting",
        unit="img",
        disable=not progress or None,
        mininterval=2.0,
    ):
        answers = predictor.answers(Path(row["path"]))
        lat, lon, status, parsed = aggregate(answers)
        rows.append(
            {
                "image_id": row["image_id"],
                "pred_lat": lat,
                "pred_lon": lon,
                "true_lat": row["lat"],
                "true_lon": row["lon"],
                "raw_answer": answers[0] if len(answers) == 1 else "\n---\n".join(answers),
                "parse_status": status,
                "answers_parsed": parsed,
            }
        )
    table = pl.DataFrame(rows, schema=PREDICTION_SCHEMA)
    unparseable = int(table["pred_lat"].is_null().sum())
    log.info("%d predictions, %d unparseable answers", table.height, unparseable)
    return table
