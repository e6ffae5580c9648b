"""Every evaluation in one comparison: ``summary.csv``, ``summary.md``, paired comparisons and
the published reference rows beside ours."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.evaluation.paired import (
    PAIRED_SCHEMA,
    all_pairs,
    read_outcomes,
    versus_best_baseline,
)
from geolocsft.evaluation.references import PublishedRow, published_for
from geolocsft.evaluation.report import MEDIAN_ALL_LABEL, MEDIAN_ANSWERED_LABEL
from geolocsft.evaluation.settings import (
    EvaluationSettings,
    accuracy_key,
    default_settings,
    fmt,
)

log = logging.getLogger(__name__)

SUMMARY_LEADING_COLUMNS = ("predictor", "evalset", "n", "answered", "answered_pct")
SUMMARY_TRAILING_COLUMNS = ("median_km", "median_all_km", "mean_km", "mean_geoscore")
PUBLISHED_MARK = "published"


@dataclass(frozen=True)
class SummaryExtras:
    """What the summary adds to the table of metrics (all optional).

    ``per_image``: each entry's ``per_image.csv`` (same order as the entries), for the paired
    comparisons; ``baselines``: the predictors that are floor baselines; ``paired_csv``: where
    every pair's comparison goes; ``references``/``reference_benchmarks``: published rows and
    eval set -> benchmark names; ``published_csv``: where the matched published rows go.
    """

    per_image: Sequence[str | os.PathLike[str]] = ()
    baselines: Sequence[str] = ()
    settings: EvaluationSettings | None = None
    paired_csv: str | os.PathLike[str] | None = None
    references: Sequence[PublishedRow] = ()
    reference_benchmarks: Mapping[str, str] | None = None
    published_csv: str | os.PathLike[str] | None = None


def _load_accuracy_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputTableError(f"{path}: cannot read the accuracy file: {exc}") from exc
    if not isinstance(document, dict) or "n" not in document:
        raise InputTableError(f"{path}: not an accuracy.json written by geolocsft evaluate")
    return document


def summary_table(
    entries: Iterable[tuple[str, str, str | os.PathLike[str]]],
) -> tuple[pl.DataFrame, list[str]]:
    """The metrics of each ``(predictor, evalset, accuracy.json)`` as one table, and the
    ``acc@<R>km`` keys found (union in order of first appearance)."""
    rows: list[dict[str, Any]] = []
    acc_keys: list[str] = []
    for predictor, evalset, path in entries:
        document = _load_accuracy_json(Path(path))
        for key in document:
            if key.startswith("acc@") and key not in acc_keys:
                acc_keys.append(key)
        rows.append({"predictor": predictor, "evalset": evalset, **document})
    schema: dict[str, pl.DataType] = {
        "predictor": pl.String(),
        "evalset": pl.String(),
        "n": pl.Int64(),
        "answered": pl.Int64(),
        "answered_pct": pl.Float64(),
        **{key: pl.Float64() for key in acc_keys},
        **{key: pl.Float64() for key in SUMMARY_TRAILING_COLUMNS},
    }
    for key in acc_keys:
        schema[f"{key}_ci_low"] = pl.Float64()
        schema[f"{key}_ci_high"] = pl.Float64()
    schema.update({"interval": pl.String(), "distance": pl.String(), "truth_source": pl.String()})
    records = []
    for row in rows:
        record: dict[str, Any] = {key: row.get(key) for key in schema}
        ci = row.get("ci") or {}
        for key in acc_keys:
            interval = ci.get(key) or [None, None]
            record[f"{key}_ci_low"], record[f"{key}_ci_high"] = interval[0], interval[1]
        records.append(record)
    return pl.DataFrame(records, schema=schema), acc_keys


def published_table(
    matched: Mapping[str, Sequence[PublishedRow]], acc_keys: Sequence[str]
) -> pl.DataFrame:
    """``published.csv``: the published rows shown, by eval set, marked as published."""
    records = []
    for evalset, rows in matched.items():
        for row in rows:
            by_key = {accuracy_key(r): v for r, v in row.accuracy_pct.items()}
            records.append(
                {
                    "source": PUBLISHED_MARK,
                    "evalset": evalset,
                    "benchmark": row.benchmark,
                    "method": row.method,
                    **{key: by_key.get(key) for key in acc_keys},
                    "images": row.images,
                    "checked": row.checked,
                    "citation": row.citation,
                }
            )
    schema: dict[str, pl.DataType] = {
        "source": pl.String(),
        "evalset": pl.String(),
        "benchmark": pl.String(),
        "method": pl.String(),
        **{key: pl.Float64() for key in acc_keys},
        "images": pl.Int64(),
        "checked": pl.Boolean(),
        "citation": pl.String(),
    }
    return pl.DataFrame(records, schema=schema)


def write_summary(
    entries: Iterable[tuple[str, str, str | os.PathLike[str]]],
    out_csv: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
    extras: SummaryExtras | None = None,
) -> pl.DataFrame:
    """Combine several ``accuracy.json`` files into one comparison.

    ``entries`` are ``(predictor, evalset, path_to_accuracy.json)`` triples, one row each, in
    the given order. ``out_csv`` gets columns ``predictor, evalset, n, answered, answered_pct``,
    every ``acc@<R>km`` found (union in order of first appearance; null where a file lacks it),
    ``median_km, median_all_km, mean_km, mean_geoscore``, then ``acc@<R>km_ci_low``/``_ci_high``,
    ``interval``, ``distance`` and ``truth_source``: our numbers only. ``out_md`` has a section
    per eval set (our rows, then the published rows for its benchmark, marked as published) and,
    with ``extras.per_image``, the paired comparison of each predictor with the best baseline;
    ``extras.paired_csv`` gets every pair. Returns the CSV's table.
    """
    extras = extras or SummaryExtras()
    entries = list(entries)
    table, acc_keys = summary_table(entries)
    settings = extras.settings or default_settings()
    versus = pairs = None
    if extras.per_image:
        if len(extras.per_image) != len(entries):
            raise ValueError(f"{len(extras.per_image)} per-image tables for {len(entries)} entries")
        outcomes = [
            read_outcomes(predictor, evalset, Path(path))
            for (predictor, evalset, _), path in zip(entries, extras.per_image, strict=True)
        ]
        pairs = all_pairs(outcomes, settings)
        versus = versus_best_baseline(outcomes, extras.baselines, settings)
    evalsets = list(dict.fromkeys(table["evalset"].to_list()))
    matched = published_for(evalsets, extras.references, extras.reference_benchmarks or {})
    published = published_table(matched, acc_keys)
    csv_path, md_path = Path(out_csv), Path(out_md)
    try:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        table.write_csv(csv_path)
        if extras.paired_csv is not None:
            (pairs if pairs is not None else pl.DataFrame(schema=PAIRED_SCHEMA)).write_csv(
                Path(extras.paired_csv)
            )
        if extras.published_csv is not None:
            published.write_csv(Path(extras.published_csv))
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(
            summary_markdown(table, acc_keys, settings, matched, versus), encoding="utf-8"
        )
    except OSError as exc:
        raise GeolocsftError(f"cannot write the evaluation summary: {exc}") from exc
    log.info("summary of %d evaluations -> %s, %s", table.height, csv_path, md_path)
    return table


def _header(acc_keys: Sequence[str], suffix: str = " (%)") -> list[str]:
    return [f"Acc@{key.removeprefix('acc@').removesuffix('km')} km{suffix}" for key in acc_keys]


def _ours(table: pl.DataFrame, acc_keys: Sequence[str]) -> list[str]:
    headers = ["predictor", "n", "answered", *_header(acc_keys)]
    headers += [MEDIAN_ANSWERED_LABEL, MEDIAN_ALL_LABEL, "mean GeoScore"]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for row in table.iter_rows(named=True):
        cells = [str(row["predictor"]), str(row["n"]), str(row["answered"])]
        for key in acc_keys:
            cell = fmt(row[key], 2)
            low, high = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
            if low is not None and high is not None:
                cell += f" [{fmt(low, 2)}, {fmt(high, 2)}]"
            cells.append(cell)
        cells += [fmt(row["median_km"], 1), fmt(row["median_all_km"], 1)]
        cells.append(fmt(row["mean_geoscore"], 1))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _published(rows: Sequence[PublishedRow], acc_keys: Sequence[str]) -> list[str]:
    headers = ["method (published)", *_header(acc_keys), "images", "citation"]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 2) + ["---"]) + "|",
    ]
    for row in rows:
        by_key = {accuracy_key(r): v for r, v in row.accuracy_pct.items()}
        cells = [f"{row.method}{'' if row.checked else ' †'}"]
        cells += [fmt(by_key.get(key), 2) for key in acc_keys]
        cells += [str(row.images) if row.images is not None else "–", row.citation]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _versus(versus: pl.DataFrame, acc_keys: Sequence[str]) -> list[str]:
    headers = ["predictor", "eval set", *_header(acc_keys, " (pp)")]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(headers) - 2)) + "|",
    ]
    for (predictor, evalset), group in versus.group_by(
        ["predictor_a", "evalset"], maintain_order=True
    ):
        cells = [str(predictor), str(evalset)]
        by_metric = {row["metric"]: row for row in group.iter_rows(named=True)}
        for key in acc_keys:
            row = by_metric.get(key)
            if row is None or row["difference_pp"] is None:
                cells.append("–")
                continue
            cells.append(
                f"{row['difference_pp']:+.2f} [{fmt(row['ci_low'], 2)}, {fmt(row['ci_high'], 2)}]"
                f" vs {row['predictor_b']}, p={row['p_value_mcnemar']:.3g}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_markdown(
    table: pl.DataFrame,
    acc_keys: Sequence[str],
    settings: EvaluationSettings | None = None,
    published: Mapping[str, Sequence[PublishedRow]] | None = None,
    versus: pl.DataFrame | None = None,
) -> str:
    """The summary as markdown: a section per eval set with our rows (Acc@R with intervals)
    and, below them, the published rows for the same benchmark; then paired comparisons."""
    settings = settings or default_settings()
    published = published or {}
    level = f"{100 * settings.confidence:g}%"
    method = (
        "Wilson score interval"
        if settings.interval == "wilson"
        else f"percentile bootstrap of {settings.bootstrap_resamples} resamples"
    )
    sources = set(table["truth_source"].drop_nulls().to_list()) if table.height else set()
    truth = (
        "Truth and n come from each eval set's manifest (a missing prediction is a miss)."
        if sources <= {"manifest"}
        else "Some rows took truth and n from the prediction file itself (no manifest)."
    )
    lines = [
        "# Accuracy of every predictor",
        "",
        "Acc@R: percent of all images of the eval set within R km (an image without a usable "
        f"answer is a miss), with its {level} confidence interval ({method}) in brackets. "
        f"{truth} Median errors: over answered images only, and over all images with a miss "
        "counted at the cap.",
    ]
    for evalset in dict.fromkeys(table["evalset"].to_list()):
        lines += [
            "",
            f"## {evalset}",
            "",
            *_ours(table.filter(pl.col("evalset") == evalset), acc_keys),
        ]
        rows = published.get(evalset)
        if rows:
            benchmark = rows[0].benchmark
            lines += [
                "",
                f"Published on {benchmark}: copied from the papers, NOT computed here (other "
                "training data and code); shown for reference, never part of an interval or "
                "comparison above.",
                "",
                *_published(rows, acc_keys),
            ]
            if not all(row.checked for row in rows):
                lines += ["", "† transcribed from the paper's table; check before quoting."]
    if versus is not None and versus.height:
        how = (
            f"{level} paired bootstrap interval ({settings.bootstrap_resamples} resamples of "
            "images, both predictors together; Newcombe's score interval where the two never "
            "disagree)"
            if settings.bootstrap_resamples
            else f"{level} Newcombe score interval for paired proportions"
        )
        lines += [
            "",
            "## Paired comparisons: each predictor vs the best baseline",
            "",
            "Difference in Acc@R (percentage points) on the same images: this predictor minus "
            f"the baseline with the highest Acc@R at that radius on that eval set; {how} and "
            "McNemar's exact p. Every pair: paired.csv.",
            "",
            *_versus(versus, acc_keys),
        ]
    return "\n".join(lines) + "\n"
