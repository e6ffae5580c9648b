"""Published reference rows: results from the papers, shown beside ours, never mixed in.

A references table (YAML; the bundled one is ``geolocsft/references.yaml``) lists rows of
``benchmark, method, accuracy_pct, citation`` (see that file's header). An eval set is matched to
a published benchmark by name, ignoring case and punctuation (``im2gps3k`` matches ``Im2GPS3k``),
or through ``evaluate.reference_benchmarks`` (``{my-i3k: Im2GPS3k}``). The summary shows the
matching rows under their eval set, marked as published; they enter no statistic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import yaml

from geolocsft.errors import GeolocsftError

#: ``evaluate.references`` value that names the table shipped with geolocsft.
BUNDLED = "bundled"
BUNDLED_FILE = "references.yaml"


@dataclass(frozen=True)
class ReferenceSettings:
    """Which published rows the summary shows (``evaluate`` in config)."""

    CONFIG_SECTION: ClassVar[str] = "evaluate"

    references: str | None
    reference_benchmarks: dict[str, str]


@dataclass(frozen=True)
class PublishedRow:
    """One published result: Acc@R in percent by R in km."""

    benchmark: str
    method: str
    accuracy_pct: dict[float, float]
    citation: str
    images: int | None
    note: str | None
    checked: bool


def bundled_references() -> Path:
    """The references table shipped with geolocsft."""
    return Path(str(resources.files("geolocsft").joinpath(BUNDLED_FILE)))


def references_file(value: str | None, base: Path | None = None) -> Path | None:
    """The table ``evaluate.references`` names: the bundled one, a path (relative to ``base``),
    or ``None`` (no published rows)."""
    if value is None:
        return None
    if value == BUNDLED:
        return bundled_references()
    path = Path(value)
    return path if path.is_absolute() or base is None else base / path


def _row(item: Any, where: str) -> PublishedRow:
    if not isinstance(item, Mapping):
        raise GeolocsftError(f"{where}: a row must be a mapping, got {item!r}")
    missing = [k for k in ("benchmark", "method", "accuracy_pct", "citation") if k not in item]
    if missing:
        raise GeolocsftError(f"{where}: missing {', '.join(missing)}")
    unknown = set(item) - {
        "benchmark",
        "method",
        "accuracy_pct",
        "citation",
        "images",
        "note",
        "checked",
    }
    if unknown:
        raise GeolocsftError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    accuracy = item["accuracy_pct"]
    if not isinstance(accuracy, Mapping) or not accuracy:
        raise GeolocsftError(f"{where}: accuracy_pct must map distances in km to percents")
    values: dict[float, float] = {}
    for radius, pct in accuracy.items():
        try:
            r, p = float(radius), float(pct)
        except (TypeError, ValueError):
            raise GeolocsftError(
                f"{where}: accuracy_pct {radius!r}: {pct!r} is not a number"
            ) from None
        if not (math.isfinite(r) and r > 0 and math.isfinite(p) and 0 <= p <= 100):
            raise GeolocsftError(
                f"{where}: accuracy_pct {radius!r}: {pct!r} must be a radius > 0 km and a "
                "percent in [0, 100]"
            )
        values[r] = p
    images = item.get("images")
    if images is not None and (isinstance(images, bool) or not isinstance(images, int)):
        raise GeolocsftError(f"{where}: images must be a whole number, got {images!r}")
    return PublishedRow(
        benchmark=str(item["benchmark"]),
        method=str(item["method"]),
        accuracy_pct=values,
        citation=" ".join(str(item["citation"]).split()),
        images=images,
        note=str(item["note"]) if item.get("note") is not None else None,
        checked=bool(item.get("checked", False)),
    )


def load_references(path: Path) -> list[PublishedRow]:
    """The rows of a references table; a malformed one is an error naming file and row."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GeolocsftError(f"{path}: cannot read the references table: {exc}") from exc
    rows = document.get("rows") if isinstance(document, Mapping) else None
    if not isinstance(rows, list):
        raise GeolocsftError(f"{path}: a references table has a list `rows:` (see {BUNDLED_FILE})")
    return [_row(item, f"{path}: rows[{i}]") for i, item in enumerate(rows)]


def _name_key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def published_for(
    evalsets: Sequence[str], rows: Sequence[PublishedRow], aliases: Mapping[str, str]
) -> dict[str, list[PublishedRow]]:
    """The published rows of each eval set (only those with any), in table order."""
    matched: dict[str, list[PublishedRow]] = {}
    for evalset in evalsets:
        wanted = _name_key(aliases.get(evalset, evalset))
        found = [row for row in rows if _name_key(row.benchmark) == wanted]
        if found:
            matched[evalset] = found
    return matched
