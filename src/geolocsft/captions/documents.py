"""Caption files: what one holds, where it lives, and how it is rebuilt cheaply.

A caption file is ``<captions>/<shard>/<image_id>.json`` (:func:`caption_file`; the shard is two
hex digits of the sha256 of the id, see :mod:`geolocsft.layout`), and ``index.csv`` gives each
image's path relative to the folder (``caption_path``). It holds the caption (the paper's field
names), its provenance and the distance check, and is a deterministic function of the stored
answer and the manifest row, so rebuilding it reproduces the same bytes.

Rebuilding 100,000 files from the response store means reading and validating 100,000 answers.
The bytes of each file are therefore also kept in the per-item memo (``memo.dir``): the blob in
:class:`geolocsft.memo.BlobStore`, and a record in an :class:`geolocsft.memo.ItemTable` keyed by
the store key, the item's fields that enter the file and the caption-file format, checked
and the store file's inode and modification time (one ``stat``). A rerun hard-links the
blobs into the output folder: byte for byte what a rebuild from the store would write.

Readers go through :func:`read_caption` (which also reads files of the earlier schema,
``geocaption-1``, in the paper's field names) and :func:`find_caption_file`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

from geolocsft.captions.legacy import LEGACY_SCHEMA_VERSION, upgrade_caption
from geolocsft.captions.prompts import PromptTemplate
from geolocsft.captions.schema import CAPTION_SCHEMA_VERSION, GeoCaption, caption_json
from geolocsft.codegraph import module_code_version
from geolocsft.geo import haversine_km
from geolocsft.io import atomic_write_bytes, json_bytes
from geolocsft.layout import item_path, shard_of
from geolocsft.memo import BlobStore, ItemTable, memo_version

#: The shape of a caption file (bump when caption_document changes what it writes).
CAPTION_FILE_FORMAT = "caption-file-3"
CAPTION_SUFFIX = ".json"
#: New memo records written as one Parquet part once this many are waiting.
MEMO_FLUSH = 100_000


@dataclass(frozen=True, slots=True)
class CaptionItem:
    """One manifest image to caption."""

    image_id: str
    #: the image file (a string from a manifest: a Path per image is costly at a million)
    path: Path | str
    sha256: str
    lat: float
    lon: float
    place: str | None


def caption_items(rows: pl.DataFrame, with_place: bool = True) -> list[CaptionItem]:
    """Manifest rows as caption items, with a place name for the prompt (unless ``with_place``
    is false: a zero-shot question must not carry the answer)."""
    count = rows.height
    columns = ("nearest_place", "admin1", "country_code") if with_place else ()
    parts = [rows[c].to_list() for c in columns if c in rows.columns]
    places = (
        [", ".join(p for p in names if p) or None for names in zip(*parts, strict=True)]
        if parts
        else [None] * count
    )
    return [
        CaptionItem(image_id, path, sha256, lat, lon, place)
        for image_id, path, sha256, lat, lon, place in zip(
            rows["image_id"].to_list(),
            rows["path"].to_list(),
            rows["sha256"].to_list(),
            rows["lat"].to_list(),
            rows["lon"].to_list(),
            places,
            strict=True,
        )
    ]


def items_from_manifest(manifest: pl.DataFrame, splits: Sequence[str]) -> list[CaptionItem]:
    """The manifest rows of the given splits, with a place name for the prompt."""
    return caption_items(manifest.filter(pl.col("split").is_in(list(splits))))


def caption_file(folder: Path, image_id: str) -> Path:
    """Where the caption file of ``image_id`` lives in a caption folder."""
    return item_path(folder, image_id, CAPTION_SUFFIX)


def find_caption_file(folder: Path, image_id: str) -> Path:
    """The caption file of ``image_id``: sharded, or flat in a folder written before sharding."""
    path = caption_file(folder, image_id)
    if not path.exists():
        flat = folder / f"{image_id}{CAPTION_SUFFIX}"
        if flat.exists():
            return flat
    return path


def read_caption(path: Path) -> dict[str, Any]:
    """A caption file, its caption in the paper's field names (files of ``geocaption-1`` are
    upgraded; ``upgraded_from`` then names the schema they were written in)."""
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if document.get("schema_version") == LEGACY_SCHEMA_VERSION:
        document["caption"] = upgrade_caption(document["caption"])
        document["schema_version"] = CAPTION_SCHEMA_VERSION
        document["upgraded_from"] = LEGACY_SCHEMA_VERSION
    return document


def caption_document(
    item: CaptionItem,
    caption: GeoCaption,
    stored: dict[str, Any],
    prompt: PromptTemplate,
    flag_distance_km: float,
) -> dict[str, Any]:
    """The caption file: caption, provenance and the distance check."""
    coordinates = caption.answer.coordinates
    distance = float(haversine_km(item.lat, item.lon, coordinates.latitude, coordinates.longitude))
    response = stored["response"]
    provenance = {
        "origin": stored.get("origin", "api"),
        "backend": stored["identity"]["backend"],
        "model": stored["identity"]["model"],
        "model_version": response.get("model_version"),
        "prompt_version": prompt.version,
        "prompt_sha256": prompt.sha256,
        "params": stored["identity"]["params"],
        "max_output_tokens_used": response.get("max_output_tokens"),
        "usage": response.get("usage"),
        "latency_s": response.get("latency_s"),
        "finish_reason": response.get("finish_reason"),
        "response_id": response.get("response_id"),
        "sdk": stored.get("sdk"),
        "received_at": stored.get("received_at"),
        "store_key": stored["key"],
    }
    for extra in ("imported", "upgraded_from"):
        if stored.get(extra) is not None:
            provenance[extra] = stored[extra]
    # Nested values in key order: a record read back from the store has its keys sorted.
    provenance = {k: _sorted(v) for k, v in provenance.items()}
    return {
        "schema_version": CAPTION_SCHEMA_VERSION,
        "image_id": item.image_id,
        "image_sha256": item.sha256,
        "caption": caption_json(caption),
        "provenance": provenance,
        "check": {
            "true_lat": item.lat,
            "true_lon": item.lon,
            "answer_distance_km": round(distance, 3),
            "flag_distance_km": flag_distance_km,
            "flagged": distance > flag_distance_km,
        },
    }


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def document_bytes(document: dict[str, Any]) -> bytes:
    """A caption file's bytes: one line of JSON (an indented dump goes through Python's slow
    encoder, five times the cost of the rest of a rebuild), fields in the order written, the
    paper's order in the caption."""
    return json_bytes(document, indent=None, sort_keys=False)


@dataclass(frozen=True)
class Written:
    """A caption file in the output folder, and what its check says."""

    path: str  # relative to the folder
    flagged: bool
    distance_km: float
    origin: str
    sha256: str  # of the file's bytes


class _Memo(NamedTuple):
    """A memoized caption file (a tuple: a rerun makes one per image)."""

    blob: str
    flagged: bool
    distance_km: float
    origin: str


class CaptionFolder:
    """The caption files of one run, written once per content and linked from the memo."""

    def __init__(
        self,
        out_dir: Path,
        prompt: PromptTemplate,
        flag_distance_km: float,
        memo_dir: Path | None,
    ) -> None:
        self.out_dir = out_dir
        self.prompt = prompt
        self.flag_distance_km = flag_distance_km
        self.blobs = BlobStore(memo_dir) if memo_dir is not None else None
        self.table = (
            ItemTable(memo_dir, "caption-files", caption_file_version())
            if memo_dir is not None
            else None
        )
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._shards: set[str] = set()
        self._root = str(out_dir)

    def prepare(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def memo_key(self, item: CaptionItem, store_key: str, stamp: str) -> str:
        """Everything that shapes the file: the stored answer (its key, and the ``stamp`` of its
        file in the store, so a replaced answer is never served from the memo), the item's
        fields, the flag distance and the prompt version."""
        fields = (
            store_key,
            stamp,
            item.image_id,
            item.sha256,
            repr(item.lat),
            repr(item.lon),
            item.place or "",
            repr(self.flag_distance_km),
            self.prompt.version,
        )
        return hashlib.sha256("\0".join(fields).encode()).hexdigest()

    def lookup(self, memo_keys: Sequence[str]) -> dict[str, _Memo]:
        """The memo records of the given keys that exist."""
        if self.table is None:
            return {}
        found = self.table.load(memo_keys)
        if found is None or found.height == 0:
            return {}
        return {
            key: _Memo(blob, flagged, distance, origin)
            for key, blob, flagged, distance, origin in found.select(
                "key", "blob", "flagged", "distance_km", "origin"
            ).iter_rows()
        }

    # A rerun links up to millions of files: the hot path works on strings and os calls, not
    # pathlib (ten Path objects per file cost more than the link itself).

    def _relpath(self, image_id: str) -> str:
        return f"{shard_of(image_id)}/{image_id}{CAPTION_SUFFIX}"

    def _target(self, relpath: str) -> str:
        shard = relpath[:2]
        if shard not in self._shards:
            os.makedirs(f"{self._root}/{shard}", exist_ok=True)  # noqa: PTH103 (hot path)
            self._shards.add(shard)
        return f"{self._root}/{relpath}"

    def _link(self, blob: str, target: str) -> None:
        assert self.blobs is not None, "only files of the memo are linked"
        self.blobs.link_to(blob, target)

    def link_all(self, found: Sequence[tuple[str, _Memo]]) -> list[Written]:
        """Put memoized files in place (hard links to their blobs): ``(image_id, memo)``."""
        if not found:
            return []
        assert self.blobs is not None, "only files of the memo are linked"
        relpaths = [self._relpath(image_id) for image_id, _ in found]
        self.blobs.link_all(
            self.out_dir, zip((memo.blob for _, memo in found), relpaths, strict=True)
        )
        return [
            Written(relpath, memo.flagged, memo.distance_km, memo.origin, memo.blob)
            for relpath, (_, memo) in zip(relpaths, found, strict=True)
        ]

    def write(
        self,
        item: CaptionItem,
        caption: GeoCaption,
        stored: dict[str, Any],
        memo_key: str,
    ) -> Written:
        """Write the caption file of a validated answer (and remember its bytes)."""
        document = caption_document(item, caption, stored, self.prompt, self.flag_distance_km)
        data = document_bytes(document)
        relpath = self._relpath(item.image_id)
        target = self._target(relpath)
        check = document["check"]
        origin = document["provenance"]["origin"]
        if self.blobs is None:
            atomic_write_bytes(Path(target), data, fsync=False)
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = self.blobs.put(data)
            self._link(blob, target)
            record = {
                "key": memo_key,
                "blob": blob,
                "flagged": check["flagged"],
                "distance_km": check["answer_distance_km"],
                "origin": origin,
            }
            with self._lock:
                self._records.append(record)
                full = len(self._records) >= MEMO_FLUSH
            if full:
                self.save()  # in parts, so a million new records never wait in memory
        return Written(relpath, check["flagged"], check["answer_distance_km"], origin, blob)

    def save(self) -> None:
        """Add this run's new memo records (one Parquet part)."""
        with self._lock:
            records, self._records = self._records, []
        if self.table is not None and records:
            self.table.add(pl.DataFrame(records, schema=_MEMO_SCHEMA))


_MEMO_SCHEMA = {
    "key": pl.String,
    "blob": pl.String,
    "flagged": pl.Boolean,
    "distance_km": pl.Float64,
    "origin": pl.String,
}


def caption_file_version() -> str:
    """The memo version of caption files: their format and the code that writes them."""
    return memo_version(
        CAPTION_FILE_FORMAT, CAPTION_SCHEMA_VERSION, module_code_version("captions.documents")
    )
