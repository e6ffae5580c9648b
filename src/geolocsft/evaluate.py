"""Evaluate: a prediction table → Acc@R with intervals, per-country table, plots.

A prediction table has one row per image with the columns ``pred_lat, pred_lon`` and, unless a
manifest gives the truth, ``true_lat, true_lon``; optionally ``image_id``, ``country_code`` and
any other columns (kept in the per-image output). How it is read, and how it is joined on the
eval set's manifest (truth and n from the manifest; a missing id is a miss; an unknown or
repeated id is an error), is :mod:`geolocsft.evaluation.inputs`. In short:

* a prediction that is empty, ``nan``, non-numeric (``unknown``) or out of range makes its row
  *unanswered*: a miss. Acc@R is the percent of **all** rows whose prediction lies within R km,
  and an unanswered row's GeoScore is 0. A warning names the rows, columns and reasons;
* predicted longitudes written in 0..360 (none negative, some above 180) are converted to
  -180..180, with a warning naming the rows;
* a ground truth that is empty, non-numeric or out of range is an error
  (:class:`~geolocsft.errors.InputTableError`) naming the file, the column and the rows.

A distance of exactly R km counts as within R km (a tolerance of 1 mm for float rounding).

This module runs one evaluation; its parts live in :mod:`geolocsft.evaluation` (settings,
intervals, metrics, inputs, per_country, report, paired, references, summary) and the names the
rules and tests use are re-exported here.

Files written by :func:`evaluate_file` into its output folder:

``accuracy.json``
    One object: ``label``, ``predictions``, ``manifest``, ``truth_source`` (``manifest`` or
    ``prediction file``), ``missing_predictions`` (eval images without a row: misses),
    ``truth_disagreements``, ``pred_lon_wrapped``, ``n``, ``answered``, ``answered_pct``,
    ``acc@<R>km`` per threshold (e.g. ``acc@1km``, ``acc@0.5km``), ``median_km`` (answered
    only), ``median_all_km`` (all rows, a miss at 20,000 km), ``mean_km`` (answered only),
    ``mean_geoscore`` (all rows), ``ci`` (``{"acc@1km": [low, high], ...}``), ``interval``,
    ``distance``, ``earth_radius_km``, ``thresholds_km``, ``bootstrap_resamples``,
    ``confidence``, ``seed``, ``hit_tolerance_km``, ``miss_distance_km``. Undefined values
    (no rows, no answered rows) are ``null``; the file never holds NaN.
``accuracy.csv``
    The same metrics as one row, with a ``label`` column and ``acc@<R>km_ci_low`` /
    ``acc@<R>km_ci_high`` columns.
``accuracy.md``
    A markdown table: metric, value, confidence interval.
``per_image.csv``
    The evaluated rows (text as read; with a manifest, one per eval image in the manifest's
    order, truth and ``country_code`` from it) plus ``distance_km`` (empty when unanswered),
    ``answered`` (true/false) and ``geoscore``.
``per_country.csv``
    Always written, so a workflow can declare it: ``country_code, n, answered, acc@<R>km...,
    median_km, mean_geoscore``, one row per country of the true location, largest first. It
    holds only the header when no row has a country. Rows whose country is null or empty are
    grouped under ``unknown``.
``error_cdf.png``, ``world_map.png``
    Unless plots are switched off; see :mod:`geolocsft.plots`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl

from geolocsft import plots
from geolocsft.errors import GeolocsftError
from geolocsft.evaluation.inputs import (
    REQUIRED_COLUMNS,
    ROW_COLUMN,
    TRUTH_FROM_FILE,
    evaluation_table,
    parse_prediction_table,
    read_predictions,
)
from geolocsft.evaluation.intervals import (
    bootstrap_accuracy_ci,
    paired_difference,
    wilson_intervals,
)
from geolocsft.evaluation.metrics import (
    AccuracyMetrics,
    PredictionArrays,
    compute_distances,
    compute_metrics,
)
from geolocsft.evaluation.per_country import UNKNOWN_COUNTRY, per_country_table
from geolocsft.evaluation.report import TRUTH_FROM_FILE_NOTE, metrics_markdown, metrics_row
from geolocsft.evaluation.settings import (
    EvaluationSettings,
    accuracy_key,
    default_settings,
)
from geolocsft.evaluation.summary import SummaryExtras, summary_markdown, write_summary
from geolocsft.geo import FloatArray, geoscore

__all__ = [
    "OUTPUT_FILES",
    "PER_IMAGE_ADDED_COLUMNS",
    "REQUIRED_COLUMNS",
    "UNKNOWN_COUNTRY",
    "AccuracyMetrics",
    "EvaluationResult",
    "EvaluationSettings",
    "PredictionArrays",
    "SummaryExtras",
    "accuracy_key",
    "bootstrap_accuracy_ci",
    "compute_distances",
    "compute_metrics",
    "default_settings",
    "evaluate_file",
    "evaluate_table",
    "metrics_markdown",
    "metrics_row",
    "paired_difference",
    "parse_prediction_table",
    "per_country_table",
    "summary_markdown",
    "wilson_intervals",
    "write_summary",
]

log = logging.getLogger(__name__)

#: Columns that evaluation adds to the per-image table (an input column of that name is replaced).
PER_IMAGE_ADDED_COLUMNS = ("distance_km", "answered", "geoscore")

OUTPUT_FILES = {
    "json": "accuracy.json",
    "csv": "accuracy.csv",
    "md": "accuracy.md",
    "per_image": "per_image.csv",
    "per_country": "per_country.csv",
    "error_cdf": "error_cdf.png",
    "world_map": "world_map.png",
}


@dataclass(frozen=True)
class EvaluationResult:
    """Everything one evaluation produced; ``outputs`` maps names of :data:`OUTPUT_FILES` to
    the files written (empty for an in-memory :func:`evaluate_table`)."""

    label: str
    metrics: AccuracyMetrics
    arrays: PredictionArrays
    distance_km: FloatArray
    per_image: pl.DataFrame
    per_country: pl.DataFrame
    truth_source: str = TRUTH_FROM_FILE
    missing_predictions: int = 0
    truth_disagreements: int = 0
    outputs: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``accuracy.json``'s object without the file paths."""
        return {
            "label": self.label,
            "truth_source": self.truth_source,
            "missing_predictions": self.missing_predictions,
            "truth_disagreements": self.truth_disagreements,
            "pred_lon_wrapped": self.arrays.lon_wrapped,
            **self.metrics.to_dict(),
        }


def evaluate_table(
    table: pl.DataFrame,
    settings: EvaluationSettings | None = None,
    *,
    source: str = "<table>",
    label: str | None = None,
) -> EvaluationResult:
    """Score a text prediction table in memory (see :func:`parse_prediction_table`)."""
    settings = settings or default_settings()
    arrays = parse_prediction_table(table, source)
    distances = compute_distances(arrays, settings)
    metrics = compute_metrics(distances, settings)
    replaced = [c for c in PER_IMAGE_ADDED_COLUMNS if c in table.columns]
    if replaced:
        log.warning("%s: column(s) %s are replaced by computed values", source, replaced)
    per_image = table.drop(ROW_COLUMN, strict=False).with_columns(
        pl.Series("distance_km", distances).fill_nan(None),
        pl.Series("answered", arrays.answered),
        pl.Series("geoscore", geoscore(distances)),
    )
    countries = per_image["country_code"] if "country_code" in per_image.columns else None
    return EvaluationResult(
        label=label if label is not None else source,
        metrics=metrics,
        arrays=arrays,
        distance_km=distances,
        per_image=per_image,
        per_country=per_country_table(distances, countries, settings),
    )


def _draw_plots(
    result: EvaluationResult, settings: EvaluationSettings, paths: dict[str, Path]
) -> None:
    a = result.arrays
    plots.plot_error_cdf(
        result.distance_km,
        settings.thresholds_km,
        paths["error_cdf"],
        title=f"{result.label}: error CDF",
    )
    plots.plot_world_map(
        a.true_lat,
        a.true_lon,
        a.pred_lat,
        a.pred_lon,
        paths["world_map"],
        max_points=settings.map_max_points,
        seed=settings.seed,
        title=f"{result.label}: true vs predicted locations",
    )


def evaluate_file(
    pred_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    manifest_path: str | os.PathLike[str] | None = None,
    settings: EvaluationSettings | None = None,
    make_plots: bool = True,
    label: str | None = None,
) -> EvaluationResult:
    """Evaluate a prediction CSV/TSV/Parquet file and write every output into ``out_dir``.

    ``label`` (default: the file's stem) names the run in ``accuracy.json``/``.csv``/``.md``.
    ``manifest_path``: the eval set's manifest (``image_id``, ``lat``, ``lon``; ``split`` and
    ``country_code`` when present), which then gives truth, n and countries (see
    :mod:`geolocsft.evaluation.inputs`); without it the file's own truth and rows are used, and
    the outputs say so. The files written are listed in the module docstring; plots only when
    ``make_plots``. User-facing problems raise :class:`~geolocsft.errors.GeolocsftError`.
    """
    settings = settings or default_settings()
    pred = Path(pred_path)
    out = Path(out_dir)
    manifest = Path(manifest_path) if manifest_path is not None else None
    started = time.perf_counter()
    # One thread draws the plots: it imports matplotlib while the tables are read and scored,
    # and draws while they are written (polars and file writes release the GIL).
    with ThreadPoolExecutor(max_workers=1) as pool:
        warm = pool.submit(plots.warm_up) if make_plots else None
        result, timings = _evaluate_and_write(
            pred, out, manifest, settings, label, make_plots, pool, started
        )
        if warm is not None:
            warm.result()
    read_s, metrics_s, written_s = timings
    log.info(
        "%s: %d rows, %d answered; read %.2fs, scored %.2fs, wrote %.2fs, plots done %.2fs "
        "later -> %s",
        pred,
        result.metrics.n,
        result.metrics.answered,
        read_s,
        metrics_s,
        written_s - read_s - metrics_s,
        time.perf_counter() - started - written_s,
        out,
    )
    return result


def _evaluate_and_write(
    pred: Path,
    out: Path,
    manifest: Path | None,
    settings: EvaluationSettings,
    label: str | None,
    make_plots: bool,
    pool: ThreadPoolExecutor,
    started: float,
) -> tuple[EvaluationResult, tuple[float, float, float]]:
    joined = evaluation_table(read_predictions(pred), manifest, str(pred))
    read_s = time.perf_counter() - started
    result = evaluate_table(
        joined.table, settings, source=str(pred), label=label if label is not None else pred.stem
    )
    result = replace(
        result,
        truth_source=joined.truth_source,
        missing_predictions=joined.missing,
        truth_disagreements=joined.truth_disagreements,
    )
    metrics_s = time.perf_counter() - started - read_s
    if result.metrics.n == 0:
        log.warning("%s: nothing to evaluate (no rows, or an empty eval set)", pred)
    if joined.truth_source == TRUTH_FROM_FILE:
        log.info("%s: %s", pred, TRUTH_FROM_FILE_NOTE)
    paths = {name: out / file_name for name, file_name in OUTPUT_FILES.items()}
    if not make_plots:
        del paths["error_cdf"], paths["world_map"]
    document = {
        "predictions": str(pred),
        "manifest": str(manifest) if manifest is not None else None,
        **result.to_dict(),
    }
    if joined.truth_source == TRUTH_FROM_FILE:
        document["note"] = TRUTH_FROM_FILE_NOTE
    try:
        out.mkdir(parents=True, exist_ok=True)
        drawn = pool.submit(_draw_plots, result, settings, paths) if make_plots else None
        paths["json"].write_text(
            json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        metrics_row(result.metrics, result.label, result.truth_source).write_csv(paths["csv"])
        paths["md"].write_text(
            metrics_markdown(result.metrics, result.label, result.truth_source), encoding="utf-8"
        )
        result.per_image.write_csv(paths["per_image"])
        result.per_country.write_csv(paths["per_country"])
        written_s = time.perf_counter() - started
        if drawn is not None:
            drawn.result()
    except OSError as exc:
        raise GeolocsftError(f"{out}: cannot write the evaluation outputs: {exc}") from exc
    return replace(result, outputs=paths), (read_s, metrics_s, written_s)
