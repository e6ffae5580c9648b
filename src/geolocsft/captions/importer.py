"""Captions made elsewhere, into the response store; ours, out in the paper's file format.

The GeoLocSFT paper's captioning script writes one ``<image>.json`` per photo (the model's JSON:
``image_id``, ``thinking``, ``answer``, in the field names of
:mod:`geolocsft.captions.schema`), an ``<image>.txt`` when the answer was not JSON, an
``<image>.error.txt`` when the request failed, and ``analysis_summary.json`` /
``processing_log.txt``. :func:`import_captions` validates each JSON file against the caption
schema and stores it as the answer the configured captioner (``captions.backend``, ``model``,
prompt, parameters) would have been asked for: the next workflow run rebuilds its caption file
from the store and sends no request for it. Caption files of this project (any schema version)
are accepted too. Files are matched to manifest rows by image id, or by the image file's name
without its extension. Every file gets a row in a report (imported, already in the store, or
rejected with the reason) under ``<store>/imports/``.

:func:`export_paper_format` writes caption files back out as the paper's script writes them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from geolocsft.captions.documents import read_caption
from geolocsft.captions.legacy import LEGACY_SCHEMA_VERSION, upgrade_caption
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.requests import now_utc
from geolocsft.captions.schema import CAPTION_SCHEMA_VERSION, caption_json
from geolocsft.captions.store import ResponseStore, response_key
from geolocsft.captions.validate import ContentError, validate_caption
from geolocsft.errors import GeolocsftError
from geolocsft.io import atomic_write_bytes, file_sha256

log = logging.getLogger(__name__)

#: Files the paper's script writes beside the captions.
BOOKKEEPING = frozenset({"analysis_summary.json", "processing_log.txt"})
IMPORT_REPORT_SCHEMA = {
    "file": pl.String,
    "image_id": pl.String,
    "status": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "store_key": pl.String,
}


@dataclass
class ImportReport:
    """What an import did with each file (and where the report is)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    def add(
        self,
        file: Path,
        image_id: str | None,
        status: str,
        reason: str | None = None,
        detail: str | None = None,
        key: str | None = None,
    ) -> None:
        self.rows.append(
            {
                "file": str(file),
                "image_id": image_id,
                "status": status,
                "reason": reason,
                "detail": detail,
                "store_key": key,
            }
        )

    def counts(self) -> dict[str, int]:
        return dict(Counter(row["status"] for row in self.rows))

    def reasons(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rows if r["status"] == "rejected"))


def load_config(paths: list[Path]) -> dict[str, Any]:
    """Config files merged in order (later files win, key by key), like Snakemake does."""

    def merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        merged = dict(base)
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
        return merged

    config: dict[str, Any] = {}
    for path in paths:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise GeolocsftError(f"{path}: cannot read the config file: {exc}") from None
        config = merge(config, loaded)
    return config


def _manifest_index(manifest: pl.DataFrame) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    rows = manifest.select("image_id", "path", "sha256").to_dicts()
    by_id = {row["image_id"]: row for row in rows}
    by_stem: dict[str, list[dict]] = {}
    for row in rows:
        by_stem.setdefault(Path(row["path"]).stem, []).append(row)
    return by_id, by_stem


def _caption_of(data: Any) -> Any:
    """The caption in a file: the paper's model JSON, or one of this project's caption files."""
    if isinstance(data, dict) and "caption" in data and "schema_version" in data:
        legacy = data["schema_version"] == LEGACY_SCHEMA_VERSION
        return upgrade_caption(data["caption"]) if legacy else data["caption"]
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k != "image_id"}
    return data


def import_captions(
    source: Path,
    manifest: pl.DataFrame,
    identity: tuple[str, str, dict[str, Any]],
    prompt: PromptTemplate,
    store: ResponseStore,
) -> ImportReport:
    """Store every valid caption file under ``source`` as the answer of the captioner
    ``identity`` (backend, model, parameters) with ``prompt`` to its manifest image."""
    backend, model, params = identity
    if backend == "metadata":
        raise GeolocsftError(
            "captions.backend is metadata, which asks no model: imported captions stand for a "
            "model's answers, so set captions.backend and captions.model to the captioner "
            "whose answers they replace (e.g. gemini, gemini-2.5-pro)"
        )
    if not source.is_dir():
        raise GeolocsftError(f"{source}: not a folder of caption files")
    by_id, by_stem = _manifest_index(manifest)
    report = ImportReport()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        if path.name in BOOKKEEPING:
            continue
        error_file = path.name.endswith(".error.txt")
        stem = path.name[: -len(".error.txt")] if error_file else path.stem
        row = by_id.get(stem)
        matches = by_stem.get(stem, [])
        if row is None and len(matches) == 1:
            row = matches[0]
        if path.suffix != ".json":
            reason = "request_error" if error_file else "not_json"
            detail = "the paper's script kept no valid JSON answer for this image"
            report.add(path, row["image_id"] if row else None, "rejected", reason, detail)
            continue
        if row is None:
            reason = "ambiguous_image" if len(matches) > 1 else "no_manifest_row"
            report.add(path, None, "rejected", reason, detail=f"no single manifest image {stem!r}")
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            caption = validate_caption(_caption_of(data), require_thinking=True)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            report.add(path, row["image_id"], "rejected", "malformed_json", detail=str(exc))
            continue
        except ContentError as exc:
            report.add(path, row["image_id"], "rejected", exc.reason, detail=exc.detail)
            continue
        key = response_key(
            image_sha256=row["sha256"],
            prompt_sha256=prompt.sha256,
            backend=backend,
            model=model,
            params=params,
            schema_version=CAPTION_SCHEMA_VERSION,
        )
        if store.get(key) is not None:
            report.add(path, row["image_id"], "already_in_store", key=key)
            continue
        store.put(key, _record(key, row, caption_json(caption), identity, prompt, path))
        report.add(path, row["image_id"], "imported", key=key)
    report.path = store.root / "imports" / f"import-{now_utc().replace(':', '')}.csv"
    report.path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(report.rows, schema=IMPORT_REPORT_SCHEMA).write_csv(report.path)
    log.info("import of %s: %s; report %s", source, report.counts(), report.path)
    return report


def _record(
    key: str,
    row: dict[str, Any],
    caption: dict[str, Any],
    identity: tuple[str, str, dict[str, Any]],
    prompt: PromptTemplate,
    path: Path,
) -> dict[str, Any]:
    backend, model, params = identity
    return {
        "key": key,
        "identity": {
            "image_sha256": row["sha256"],
            "prompt_sha256": prompt.sha256,
            "backend": backend,
            "model": model,
            "params": params,
            "schema_version": CAPTION_SCHEMA_VERSION,
        },
        "origin": "import",
        "first_image_id": row["image_id"],
        "prompt_version": prompt.version,
        "response": {
            "text": json.dumps(caption, ensure_ascii=False),
            "finish_reason": "STOP",
            "block_reason": None,
            "usage": None,
            "model_version": None,
            "response_id": None,
            "latency_s": None,
            "max_output_tokens": None,
        },
        "raw": None,
        "sdk": "geolocsft captions import",
        "received_at": None,
        "imported": {
            "file": str(path.resolve()),
            "sha256": file_sha256(path),
            "imported_at": now_utc(),
        },
    }


def export_paper_format(
    captions_dir: Path, out_dir: Path, file_names: dict[str, str] | None = None
) -> int:
    """Write every caption file under ``captions_dir`` as the paper's script writes its
    answers: ``<out_dir>/<image file stem>.json`` holding ``image_id`` (the image's file name),
    ``thinking`` and ``answer``. Returns the number of files written."""
    names = file_names or {}
    count = 0
    for path in sorted(captions_dir.rglob("*.json")):
        document = read_caption(path)
        image_id = document["image_id"]
        name = names.get(image_id, f"{image_id}.jpg")
        paper = {"image_id": name, **document["caption"]}
        text = json.dumps(paper, ensure_ascii=False, indent=2)
        atomic_write_bytes(out_dir / f"{Path(name).stem}.json", text.encode(), fsync=False)
        count += 1
    return count


def report_line(report: ImportReport) -> str:
    """One line saying what an import did."""
    counts = report.counts()
    rejected = ", ".join(f"{r} {n}" for r, n in report.reasons().items())
    return (
        f"{counts.get('imported', 0)} captions imported, {counts.get('already_in_store', 0)} "
        f"already in the store, {counts.get('rejected', 0)} rejected"
        + (f" ({rejected})" if rejected else "")
        + f"; every file is listed in {report.path}"
    )
