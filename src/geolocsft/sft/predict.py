"""Answers of a fine-tuned (or base) vision-language model for benchmark images.

Backends (``sft.runs.<run>.predict.backend``):

``transformers``
    The base model plus the LoRA adapter with Hugging Face transformers (or, for a run with
    ``finetuning_type: full``, the fine-tuned model itself: its ``adapter/`` folder holds a whole
    model), one image at a time, on the GPU when torch sees one, else on the CPU.
``vllm``
    The base model with the LoRA adapter applied per request by vLLM, images sent in batches
    (GPU only: on a machine where torch sees no CUDA device it stops with a clear message, and
    vLLM itself is installed on the GPU node, not from constraints.txt, since it pins its own
    torch).

Both backends build the prompt the same way: the model's processor's chat template over one user
turn (the image, then the instruction), with the photo prepared exactly as for training
(:func:`geolocsft.images.model_input_image`), and stop at the model's own end-of-turn tokens
(its generation config's ``eos_token_id``, :func:`geolocsft.sft.models.stop_token_ids`). Each
answer is parsed by :func:`geolocsft.answers.parse_answer` in the format the run was trained to
write (``answer.coordinates`` of a geo-caption, or the coordinates object); a row keeps the raw
answer and the parse status, and an unparseable answer is a row with empty coordinates (the
evaluator counts it as a miss), never a dropped row. With ``samples > 1`` the
model answers k times (sampling) and the prediction is the geodesic medoid of the parseable
answers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import polars as pl
from tqdm import tqdm

from geolocsft.answers import AnswerFormat, parse_answer
from geolocsft.errors import GeolocsftError
from geolocsft.geo import geodesic_medoid_index
from geolocsft.images import ImagePreparation, model_input_image
from geolocsft.predictions import PREDICTION_SCHEMA
from geolocsft.settings import from_config, with_defaults
from geolocsft.sft.dataset import answer_format
from geolocsft.sft.model_family import stop_token_ids

log = logging.getLogger(__name__)

#: Ranks vLLM accepts for ``max_lora_rank``; an adapter's rank is rounded up to one of them.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class PredictSettings:
    """How a run answers (``sft.runs.<run>.predict`` in config)."""

    CONFIG_SECTION: ClassVar[str] = "sft.runs.*.predict"

    #: The instruction text of the run's dataset.
    instruction: str = field(metadata={"key": None})
    #: The run's dataset's image preparation: the model gets the pixels training gave it.
    preparation: ImagePreparation = field(metadata={"key": None})
    #: The run's ``image_max_pixels`` (LLaMA-Factory's resize in training).
    image_max_pixels: int = field(metadata={"key": None})
    #: The run's training seed.
    seed: int = field(metadata={"key": None})
    #: What the run was trained to write (from its dataset's target).
    answer_format: AnswerFormat = field(metadata={"key": None})
    max_new_tokens: int
    samples: int
    temperature: float


@dataclass(frozen=True)
class VLLMSettings:
    """Engine options of the vllm backend (``sft.runs.<run>.predict.vllm`` in config); a null
    ``tensor_parallel_size`` or ``max_model_len`` is resolved from the run by
    :func:`vllm_settings`."""

    CONFIG_SECTION: ClassVar[str] = "sft.runs.*.predict.vllm"

    tensor_parallel_size: int | None
    gpu_memory_utilization: float
    max_model_len: int | None
    batch_size: int
    #: Further keyword arguments of ``vllm.LLM`` (``enforce_eager``, ``dtype``, ...), verbatim.
    extra: dict[str, Any]


def predict_settings(
    run: Mapping[str, Any], dataset: Mapping[str, Any], instruction: str, name: str = "run"
) -> PredictSettings:
    """How the run ``run`` (an ``sft.runs`` block) trained on ``dataset`` (its ``sft.datasets``
    block) answers."""
    run = with_defaults("sft.runs.*", run, f"sft.runs.{name}")
    dataset = with_defaults("sft.datasets.*", dataset, f"sft.datasets.{run['dataset']}")
    preparation = ImagePreparation(
        max_side=dataset["image_max_side"],
        max_pixels=dataset["image_max_pixels"],
        jpeg_quality=dataset["jpeg_quality"],
    )
    return from_config(
        PredictSettings,
        run["predict"],
        f"sft.runs.{name}.predict",
        instruction=instruction,
        preparation=preparation,
        image_max_pixels=run["image_max_pixels"],
        seed=run["seed"],
        answer_format=answer_format(dataset["target"]),
    )


def vllm_settings(run: Mapping[str, Any], name: str = "run") -> VLLMSettings:
    """The vllm engine options of a run, null ones taken from the run: ``tensor_parallel_size``
    = its ``gpus``, ``max_model_len`` = ``cutoff_len + max_new_tokens``."""
    run = with_defaults("sft.runs.*", run, f"sft.runs.{name}")
    engine = from_config(VLLMSettings, run["predict"]["vllm"], f"sft.runs.{name}.predict.vllm")
    return replace(
        engine,
        tensor_parallel_size=engine.tensor_parallel_size or run["gpus"],
        max_model_len=engine.max_model_len or run["cutoff_len"] + run["predict"]["max_new_tokens"],
    )


def model_image(path: Path, settings: PredictSettings) -> Any:
    """The photo at ``path`` as the run's model saw its training photos."""
    return model_input_image(path, settings.preparation, settings.image_max_pixels)


def user_turn(instruction: str) -> list[dict[str, Any]]:
    """The chat of one question: a user turn holding the image, then the instruction."""
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": instruction.strip()}],
        }
    ]


def chat_prompt(processor: Any, instruction: str) -> str:
    """The prompt text (the processor's chat template, generation prompt appended)."""
    text: str = processor.apply_chat_template(user_turn(instruction), add_generation_prompt=True)
    return text


def aggregate(
    answers: Sequence[str], expect: AnswerFormat = "any"
) -> tuple[float | None, float | None, str, int]:
    """One prediction from k answers: the geodesic medoid of those that parse."""
    parsed = [parse_answer(a, expect) for a in answers]
    usable = [p for p in parsed if p.lat is not None and p.lon is not None]
    if not usable:
        return None, None, "unparseable", 0
    if len(usable) == 1:
        return usable[0].lat, usable[0].lon, usable[0].status, 1
    lat = np.array([p.lat for p in usable], dtype=np.float64)
    lon = np.array([p.lon for p in usable], dtype=np.float64)
    best = geodesic_medoid_index(lat, lon)
    return float(lat[best]), float(lon[best]), f"medoid_of_{len(usable)}", len(usable)


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (not whether CUDA_VISIBLE_DEVICES is set)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def require_gpu(backend: str, run_name: str) -> None:
    """Stop with a clear message when a GPU-only backend is asked for on a machine without one.

    The test is torch's ``cuda.is_available()``: a fake SLURM GPU (or a node whose driver is
    broken) sets ``CUDA_VISIBLE_DEVICES`` without giving torch a device.
    """
    if cuda_available():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    note = (
        f" (CUDA_VISIBLE_DEVICES={visible!r} is set, but torch sees no device)" if visible else ""
    )
    raise GeolocsftError(
        f"sft.runs.{run_name}: predict backend {backend!r} needs a GPU, and no CUDA device is "
        f"visible to torch on host {socket.gethostname()}{note}. Run the prediction on a GPU "
        "node (snakemake --profile profiles/slurm), or set "
        f"sft.runs.{run_name}.predict.backend: transformers, which also runs on the CPU"
    )


def import_vllm(run_name: str) -> Any:
    """The ``vllm`` module, or a clear message on how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise GeolocsftError(
            f"sft.runs.{run_name}: predict backend 'vllm' needs the vllm package, which is not "
            f"installed in this environment ({exc}). Install it on the GPU node with "
            "'pip install vllm' (into the job's environment; it is not in constraints.txt "
            "because it pins its own torch), or set "
            f"sft.runs.{run_name}.predict.backend: transformers"
        ) from None
    return vllm


def adapter_rank(adapter: Path) -> int:
    """The LoRA rank ``r`` of a PEFT adapter folder (its ``adapter_config.json``)."""
    config_path = adapter / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        return int(config["r"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GeolocsftError(
            f"{config_path}: not a readable LoRA adapter config with a rank 'r' ({exc})"
        ) from None


def vllm_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise GeolocsftError(
        f"LoRA rank {rank} is larger than vLLM supports (at most {VLLM_LORA_RANKS[-1]})"
    )


def trained_model(base_model: Path, adapter: Path | None) -> tuple[Path, Path | None]:
    """The model to load and the LoRA adapter to apply: ``(base, adapter)`` for a LoRA run,
    ``(adapter, None)`` when the run's output folder holds a whole model (full fine-tuning)."""
    if adapter is None or (adapter / "adapter_config.json").is_file():
        return base_model, adapter
    if (adapter / "config.json").is_file():
        return adapter, None
    raise GeolocsftError(
        f"{adapter}: neither a LoRA adapter (adapter_config.json) nor a model (config.json)"
    )


def processor_dir(model: Path, base_model: Path) -> Path:
    """Where the processor is: the fine-tuned model's folder when it holds one, else the base."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (model / name).is_file():
            return model
    return base_model


class Predictor(Protocol):
    """What :func:`predict` needs of a backend."""

    #: Images per call of :meth:`answers_batch`.
    batch_size: int
    #: What the model was trained to write (how its answers are parsed).
    answer_format: AnswerFormat

    def answers_batch(self, image_paths: Sequence[Path]) -> list[list[str]]:
        """The raw answers (``samples`` of them) for each image, in the order given."""
        ...


class TransformersPredictor:
    """Base model + optional LoRA adapter with Hugging Face transformers (GPU if available)."""

    batch_size = 1

    def __init__(self, base_model: Path, adapter: Path | None, settings: PredictSettings) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.settings = settings
        self.answer_format = settings.answer_format
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model_path, lora = trained_model(base_model, adapter)
        self.processor = AutoProcessor.from_pretrained(processor_dir(model_path, base_model))
        model: Any = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype)
        if lora is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, lora)
        self.model = model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        self.stop_ids = stop_token_ids(model_path, tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self.prompt = chat_prompt(self.processor, settings.instruction)

    def answers(self, image_path: Path) -> list[str]:
        image = model_image(image_path, self.settings)
        inputs = self.processor(text=[self.prompt], images=[image], return_tensors="pt").to(
            self.device
        )
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

    def answers_batch(self, image_paths: Sequence[Path]) -> list[list[str]]:
        return [self.answers(path) for path in image_paths]


class VLLMPredictor:
    """Base model + optional LoRA adapter with vLLM: batched generation, GPU only.

    The adapter is applied per request (``LoRARequest``), so the base model is loaded once and
    unchanged; ``max_lora_rank`` comes from the adapter's ``adapter_config.json``.
    """

    def __init__(
        self,
        base_model: Path,
        adapter: Path | None,
        settings: PredictSettings,
        engine: VLLMSettings,
        run_name: str = "?",
    ) -> None:
        require_gpu("vllm", run_name)
        vllm = import_vllm(run_name)
        from transformers import AutoProcessor

        self.settings = settings
        self.answer_format = settings.answer_format
        self.batch_size = engine.batch_size
        model_path, lora = trained_model(base_model, adapter)
        self.processor = AutoProcessor.from_pretrained(processor_dir(model_path, base_model))
        self.prompt = chat_prompt(self.processor, settings.instruction)
        options: dict[str, Any] = {
            "model": str(model_path),
            "limit_mm_per_prompt": {"image": 1},
            "max_model_len": engine.max_model_len,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "gpu_memory_utilization": engine.gpu_memory_utilization,
            "seed": settings.seed,
        }
        self.lora_request: Any = None
        if lora is not None:
            from vllm.lora.request import LoRARequest

            options |= {
                "enable_lora": True,
                "max_lora_rank": vllm_lora_rank(adapter_rank(lora)),
                "max_loras": 1,
            }
            self.lora_request = LoRARequest("adapter", 1, str(lora))
        options |= engine.extra
        log.info("vllm engine options: %s", options)
        self.llm = vllm.LLM(**options)
        sampling = settings.samples > 1
        self.sampling_params = vllm.SamplingParams(
            n=settings.samples,
            temperature=settings.temperature if sampling else 0.0,
            max_tokens=settings.max_new_tokens,
            seed=settings.seed,
            stop_token_ids=stop_token_ids(model_path, self.processor.tokenizer),
            skip_special_tokens=True,
        )

    def requests(self, image_paths: Sequence[Path]) -> list[dict[str, Any]]:
        """One vLLM prompt per image: the chat-template text and the fitted image."""
        return [
            {
                "prompt": self.prompt,
                "multi_modal_data": {"image": model_image(path, self.settings)},
            }
            for path in image_paths
        ]

    def answers_batch(self, image_paths: Sequence[Path]) -> list[list[str]]:
        outputs = self.llm.generate(
            self.requests(image_paths),
            self.sampling_params,
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        if len(outputs) != len(image_paths):
            raise RuntimeError(f"vllm returned {len(outputs)} outputs for {len(image_paths)}")
        return [[completion.text for completion in output.outputs] for output in outputs]


def predict(predictor: Predictor, targets: pl.DataFrame, progress: bool = True) -> pl.DataFrame:
    """One row per target image (test split of a manifest), in the prediction table's columns."""
    rows = []
    batch_size = max(1, int(predictor.batch_size))
    with tqdm(
        total=targets.height,
        desc="predicting",
        unit="img",
        disable=not progress or None,
        mininterval=2.0,
    ) as bar:
        for batch in targets.iter_slices(batch_size):
            paths = [Path(p) for p in batch["path"]]
            batch_answers = predictor.answers_batch(paths)
            if len(batch_answers) != batch.height:
                raise RuntimeError(
                    f"the predictor answered {len(batch_answers)} of {batch.height} images"
                )
            for row, answers in zip(batch.iter_rows(named=True), batch_answers, strict=True):
                lat, lon, status, parsed = aggregate(answers, predictor.answer_format)
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
            bar.update(batch.height)
    table = pl.DataFrame(rows, schema=PREDICTION_SCHEMA)
    unparseable = int(table["pred_lat"].is_null().sum())
    log.info("%d predictions, %d unparseable answers", table.height, unparseable)
    return table
