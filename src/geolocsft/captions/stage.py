"""The geo-caption stage as the workflow runs it: config in, caption files and reports out."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import polars as pl

from geolocsft.captions.backends import Backend, GenerationParams, MetadataBackend
from geolocsft.captions.documents import items_from_manifest
from geolocsft.captions.gemini import GEMINI_KEY_VARIABLES, GeminiBackend, gemini_identity
from geolocsft.captions.openai_compat import OpenAICompatibleBackend, openai_identity
from geolocsft.captions.outcomes import permanent_warning, unresolved_message
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.requests import RunnerSettings
from geolocsft.captions.runner import caption_images
from geolocsft.captions.store import ResponseStore
from geolocsft.errors import GeolocsftError
from geolocsft.settings import from_config, with_defaults

log = logging.getLogger(__name__)


def captioner_name(config: dict[str, Any]) -> str:
    """A file-name-safe label of backend and model: 'metadata', 'gemini-gemini-2.5-flash'."""
    if config["backend"] == "metadata":
        return "metadata"
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", config["model"]).strip("_")
    return f"{config['backend']}-{model}"


def gemini_key_variable() -> str:
    """The environment variable the gemini backend reads its key from (GEMINI_API_KEY first)."""
    return next((v for v in GEMINI_KEY_VARIABLES if os.environ.get(v)), GEMINI_KEY_VARIABLES[0])


def generation_params(config: dict[str, Any]) -> GenerationParams:
    return from_config(GenerationParams, config, "captions")


def runner_settings(config: dict[str, Any]) -> RunnerSettings:
    return from_config(RunnerSettings, config, "captions")


def backend_identity(config: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """Backend name, model and identity parameters of ``captions`` (what a store key holds),
    without building a client (no key needed)."""
    config = with_defaults("captions", config)
    params = generation_params(config)
    backend = config["backend"]
    if backend == "gemini":
        return backend, config["model"], gemini_identity(params, config["gemini"]["mode"])
    if backend == "openai":
        identity = openai_identity(params, config["openai"]["json_schema"])
        return backend, config["model"], identity
    return MetadataBackend.name, MetadataBackend.model, MetadataBackend().identity_params()


def build_backend(config: dict[str, Any]) -> Backend:
    """The backend named by ``captions.backend``; keys are read from the environment here."""
    config = with_defaults("captions", config)
    params = generation_params(config)
    backend = config["backend"]
    if backend == "metadata":
        return MetadataBackend()
    if backend == "gemini":
        gemini = config["gemini"]
        return GeminiBackend(
            config["model"],
            params,
            mode=gemini["mode"],
            base_url=gemini.get("base_url"),
            timeout_s=config["timeout_s"],
            batch=gemini["batch"],
        )
    if backend == "openai":
        openai = config["openai"]
        return OpenAICompatibleBackend(
            config["model"],
            params,
            base_url=openai["base_url"],
            api_key_env=openai["api_key_env"],
            timeout_s=config["timeout_s"],
            json_schema=openai["json_schema"],
        )
    raise GeolocsftError(f"unknown captions.backend {backend!r}")


def report_failures(summary: dict[str, Any], failures_path: Path | None) -> None:
    """Warn about permanent failures; fail (after everything is written) when images are left
    without a caption by failures that may pass."""
    warning = permanent_warning(summary, failures_path)
    if warning:
        log.warning("%s", warning)
    error = unresolved_message(summary, failures_path)
    if error:
        raise GeolocsftError(error)


def run_stage(
    manifest_path: Path,
    prompt_path: Path,
    config: dict[str, Any],
    captions_dir: Path,
    index_path: Path,
    summary_path: Path,
    progress: bool = True,
    memo_dir: Path | None = None,
    failures_path: Path | None = None,
) -> dict[str, Any]:
    """Caption the configured splits of a manifest; write captions, index and summary.

    Raises :class:`GeolocsftError` after writing them when images remain without a caption
    because of failures that may pass (a plain rerun asks again for exactly those).
    """
    manifest = pl.read_parquet(manifest_path)
    items = items_from_manifest(manifest, config["splits"])
    prompt = PromptTemplate.load(prompt_path)
    backend = build_backend(config)
    index, summary = caption_images(
        items,
        backend,
        ResponseStore(Path(config["store"])),
        prompt,
        runner_settings(config),
        captions_dir,
        progress=progress,
        memo_dir=memo_dir,
        failures_path=failures_path,
    )
    index_path.parent.mkdir(parents=True, exist_ok=True)
    index.write_csv(index_path)
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    report_failures(summary, failures_path)
    return summary
