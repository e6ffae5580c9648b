"""Which model a run names, its LLaMA-Factory template and its stop tokens.

A run's ``model`` is a tiny model built locally (``tiny-qwen2vl``, ``tiny-gemma3``; ``tiny`` is
``tiny-qwen2vl``), a local model folder, or a Hub id. Its chat template for LLaMA-Factory comes
from the model's own ``config.json`` (``model_type``) unless the run sets ``template``, and its
stop tokens from its ``generation_config.json`` (``eos_token_id``), so each family ends its turn
with its own token (``<|im_end|>`` for Qwen, ``<end_of_turn>`` for Gemma 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geolocsft.errors import GeolocsftError

#: Tiny models built locally (rule build_tiny_model): run ``model`` name -> family.
TINY_MODELS = {"tiny": "qwen2vl", "tiny-qwen2vl": "qwen2vl", "tiny-gemma3": "gemma3"}
#: config.json ``model_type`` -> LLaMA-Factory template, for runs with ``template: null``. Only
#: types that name one template (LLaMA-Factory 0.9.5, ``register_model_group``): ``qwen3_vl``
#: (``qwen3_vl`` for Thinking, ``qwen3_vl_nothink`` for Instruct), ``llava*``, ``paligemma`` and
#: ``mistral3`` depend on the checkpoint, so such a run must set ``template`` itself.
TEMPLATES = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "gemma3": "gemma3",
    "gemma3n": "gemma3n",
    "mllama": "mllama",
    "internvl": "intern_vl",
}


def tiny_family(model: str) -> str | None:
    """The family of a tiny model name (``tiny-gemma3`` -> ``gemma3``), None for other models."""
    return TINY_MODELS.get(model)


def model_type(model_dir: Path) -> str:
    """``model_type`` of a model folder's config.json."""
    path = Path(model_dir) / "config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["model_type"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GeolocsftError(f"{path}: no readable model_type ({exc})") from None
    return str(value)


def resolve_template(template: str | None, model_dir: Path, run: str = "run") -> str:
    """The run's LLaMA-Factory template: as set, or from the model's ``model_type``."""
    if template:
        return template
    kind = model_type(model_dir)
    if kind not in TEMPLATES:
        raise GeolocsftError(
            f"sft.runs.{run}: no LLaMA-Factory template is known for model_type {kind!r} "
            f"({model_dir}); set sft.runs.{run}.template (known: {sorted(TEMPLATES)})"
        )
    return TEMPLATES[kind]


def stop_token_ids(model_dir: Path, tokenizer: Any) -> list[int]:
    """Token ids that end the model's turn: ``eos_token_id`` of its generation config (one id
    or a list; the chat models' end-of-turn token is there) and the tokenizer's EOS."""
    ids: list[int] = []
    path = Path(model_dir) / "generation_config.json"
    if path.is_file():
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        ids += [value] if isinstance(value, int) else [int(v) for v in value or []]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise GeolocsftError(
            f"{model_dir}: neither generation_config.json nor the tokenizer name an end token"
        )
    return ids
