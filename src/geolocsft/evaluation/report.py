"""One evaluation's tables for people and spreadsheets: ``accuracy.csv`` and ``accuracy.md``."""

from __future__ import annotations

from typing import Any

import polars as pl

from geolocsft.evaluation.inputs import TRUTH_FROM_FILE
from geolocsft.evaluation.metrics import AccuracyMetrics
from geolocsft.evaluation.settings import (
    MISS_DISTANCE_KM,
    EvaluationSettings,
    fmt,
    threshold_label,
)

#: Label of the median over answered images only, wherever it is shown.
MEDIAN_ANSWERED_LABEL = "median error, answered only (km)"
#: Label of the median over every image, a miss at the cap.
MEDIAN_ALL_LABEL = f"median error, all images, miss = {MISS_DISTANCE_KM:,.0f} km (km)"
#: What a markdown table says when the truth came from the prediction file itself.
TRUTH_FROM_FILE_NOTE = (
    "Ground truth and n come from the prediction file itself (no manifest given): a predictor "
    "that drops or repeats rows changes n unnoticed. Pass the eval set's manifest (--manifest) "
    "to take truth and n from it."
)


def interval_description(settings: EvaluationSettings) -> str:
    """``95% CI: Wilson score interval``: how the Acc@R intervals were made."""
    level = f"{100 * settings.confidence:g}% CI"
    if settings.interval == "wilson":
        return f"{level}: Wilson score interval"
    return (
        f"{level}: percentile bootstrap, {settings.bootstrap_resamples} resamples, seed "
        f"{settings.seed} (Wilson at 0 or n hits)"
    )


def metrics_row(
    metrics: AccuracyMetrics, label: str | None = None, truth_source: str | None = None
) -> pl.DataFrame:
    """``accuracy.csv``: one row of metrics with ``acc@<R>km_ci_low/_ci_high`` columns."""
    values = metrics.to_dict()
    row: dict[str, Any] = {"label": label}
    row.update({key: values[key] for key in ("n", "answered", "answered_pct")})
    row.update(metrics.accuracy)
    row.update(
        {key: values[key] for key in ("median_km", "median_all_km", "mean_km", "mean_geoscore")}
    )
    schema: dict[str, pl.DataType] = {
        "label": pl.String(),
        "n": pl.Int64(),
        "answered": pl.Int64(),
    }
    for key, ci in metrics.ci.items():
        row[f"{key}_ci_low"] = ci[0] if ci else None
        row[f"{key}_ci_high"] = ci[1] if ci else None
    for key in (
        "interval",
        "distance",
        "earth_radius_km",
        "bootstrap_resamples",
        "confidence",
        "seed",
    ):
        row[key] = values[key]
    row["truth_source"] = truth_source
    schema.update(
        {
            "interval": pl.String(),
            "distance": pl.String(),
            "bootstrap_resamples": pl.Int64(),
            "seed": pl.Int64(),
            "truth_source": pl.String(),
        }
    )
    full_schema = {key: schema.get(key, pl.Float64()) for key in row}
    return pl.DataFrame([row], schema=full_schema)


def metrics_markdown(
    metrics: AccuracyMetrics, label: str | None = None, truth_source: str | None = None
) -> str:
    """``accuracy.md``: a markdown table of metric, value and confidence interval."""
    s = metrics.settings
    level = f"{100 * s.confidence:g}% CI"
    distance = (
        f"haversine on a sphere of radius {s.earth_radius_km} km"
        if s.distance == "haversine"
        else "geodesic on the WGS84 ellipsoid"
    )
    answered_pct = metrics.answered_pct
    lines = [
        f"# Accuracy: {label}" if label else "# Accuracy",
        "",
        f"{metrics.n} images, {metrics.answered} answered; distance: {distance}. "
        "Acc@R is the percent of all images within R km (an unanswered one is a miss); "
        f"{interval_description(s)}.",
    ]
    if truth_source == TRUTH_FROM_FILE:
        lines += ["", f"Note: {TRUTH_FROM_FILE_NOTE}"]
    lines += [
        "",
        f"| metric | value | {level} |",
        "|---|---:|---|",
        f"| n | {metrics.n} | |",
        f"| answered | {metrics.answered} ({fmt(answered_pct, 2)}%) | |",
    ]
    for threshold, value, ci in zip(
        metrics.thresholds_km, metrics.accuracy_pct, metrics.ci_pct, strict=True
    ):
        interval = f"{fmt(ci[0], 2)} – {fmt(ci[1], 2)}" if ci else ""
        lines.append(f"| Acc@{threshold_label(threshold)} (%) | {fmt(value, 2)} | {interval} |")
    lines += [
        f"| {MEDIAN_ANSWERED_LABEL} | {fmt(metrics.median_km, 1)} | |",
        f"| {MEDIAN_ALL_LABEL} | {fmt(metrics.median_all_km, 1)} | |",
        f"| mean error, answered only (km) | {fmt(metrics.mean_km, 1)} | |",
        f"| mean GeoScore, all images (0–5000) | {fmt(metrics.mean_geoscore, 1)} | |",
    ]
    return "\n".join(lines) + "\n"
