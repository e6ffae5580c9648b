"""Evaluate: a prediction table → Acc@R with bootstrap intervals, per-country table, plots.

A prediction table has one row per image with the columns ``pred_lat, pred_lon, true_lat,
true_lon`` and optionally ``image_id``, ``country_code`` and any other columns (kept in the
per-image output). Every cell is read as text and converted leniently, so that what a model
writes never crashes the evaluation:

* a prediction that is empty, ``nan``, non-numeric (``unknown``) or out of range (latitude
  outside [-90, 90], longitude outside [-180, 180]) makes its row *unanswered*. An unanswered
  row is a miss: Acc@R is the percent of **all** rows whose prediction lies within R km, and
  its GeoScore is 0;
* a ground truth (``true_lat``/``true_lon``) that is empty, non-numeric or out of range is an
  error (:class:`~geolocsft.errors.InputTableError`) naming the file, the column and the first
  offending data rows (row 1 is the first row after the header).

A distance of exactly R km counts as within R km: the comparison allows
:data:`HIT_TOLERANCE_KM` (1 mm) for floating-point rounding.

Files written by :func:`evaluate_file` into its output folder:

``accuracy.json``
    One object: ``label``, ``predictions``, ``manifest``, ``n``, ``answered``,
    ``answered_pct``, ``acc@<R>km`` per threshold (e.g. ``acc@1km``, ``acc@0.5km``),
    ``median_km``, ``mean_km`` (both over answered rows), ``mean_geoscore`` (over all rows),
    ``ci`` (``{"acc@1km": [low, high], ...}``), ``distance``, ``earth_radius_km``,
    ``thresholds_km``, ``bootstrap_resamples``, ``confidence``, ``seed``,
    ``hit_tolerance_km``. Undefined values (no rows, no answered rows, no resamples) are
    ``null``; the file never holds NaN.
``accuracy.csv``
    The same metrics as one row, with a ``label`` column and ``acc@<R>km_ci_low`` /
    ``acc@<R>km_ci_high`` columns.
``accuracy.md``
    A markdown table: metric, value, confidence interval.
``per_image.csv``
    The input rows (text as read) plus ``country_code`` when it was joined from a manifest, and
    ``distance_km`` (empty when unanswered), ``answered`` (true/false) and ``geoscore``.
``per_country.csv``
    Always written, so a workflow can declare it: ``country_code, n, answered, acc@<R>km...,
    median_km, mean_geoscore``, one row per country of the true location, largest first. It
    holds only the header when no row has a country (no ``country_code`` column and no
    manifest). Rows whose country is null or empty are grouped under
    :data:`UNKNOWN_COUNTRY` (``"unknown"``).
``error_cdf.png``, ``world_map.png``
    Unless plots are switched off; see :mod:`geolocsft.plots`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, get_args

import numpy as np
import numpy.typing as npt
import polars as pl

from geolocsft import plots
from geolocsft.errors import GeolocsftError, InputTableError
from geolocsft.geo import (
    HIT_TOLERANCE_KM,
    DistanceMethod,
    FloatArray,
    distance_km,
    geoscore,
    valid_coordinates,
)
from geolocsft.io import read_text_table
from geolocsft.settings import from_config

log = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]

PREDICTED_COLUMNS = ("pred_lat", "pred_lon")
TRUTH_COLUMNS = ("true_lat", "true_lon")
REQUIRED_COLUMNS = (*PREDICTED_COLUMNS, *TRUTH_COLUMNS)
#: Columns that evaluation adds to the per-image table (an input column of that name is replaced).
PER_IMAGE_ADDED_COLUMNS = ("distance_km", "answered", "geoscore")
#: Label of rows whose country is unknown (null or empty) in the per-country table.
UNKNOWN_COUNTRY = "unknown"
#: How many offending rows an error message lists before "and N more".
MAX_ROWS_IN_MESSAGE = 5

OUTPUT_FILES = {
    "json": "accuracy.json",
    "csv": "accuracy.csv",
    "md": "accuracy.md",
    "per_image": "per_image.csv",
    "per_country": "per_country.csv",
    "error_cdf": "error_cdf.png",
    "world_map": "world_map.png",
}


# ---------------------------------------------------------------------------------------------
# Settings and results


@dataclass(frozen=True)
class EvaluationSettings:
    """How predictions are scored (``evaluate`` in the workflow config).

    ``thresholds_km`` are sorted and de-duplicated. ``earth_radius_km`` applies to the
    ``haversine`` distance only (``geodesic`` uses the WGS84 ellipsoid). ``seed`` drives the
    bootstrap and the subsample of the world map (``map_max_points`` pairs at most).
    Invalid values raise :class:`~geolocsft.errors.GeolocsftError`.
    """

    CONFIG_SECTION: ClassVar[str] = "evaluate"

    thresholds_km: tuple[float, ...]
    distance: DistanceMethod
    earth_radius_km: float
    bootstrap_resamples: int
    confidence: float
    seed: int
    map_max_points: int

    def __post_init__(self) -> None:
        try:
            thresholds = tuple(sorted({float(r) for r in self.thresholds_km}))
        except (TypeError, ValueError) as exc:
            raise GeolocsftError(
                f"evaluate: thresholds_km must be numbers in km, got {self.thresholds_km!r}"
            ) from exc
        if not thresholds or not all(math.isfinite(r) and r > 0 for r in thresholds):
            raise GeolocsftError(
                "evaluate: thresholds_km must be one or more finite distances > 0 km, "
                f"got {list(self.thresholds_km)!r}"
            )
        object.__setattr__(self, "thresholds_km", thresholds)
        if self.distance not in get_args(DistanceMethod):
            raise GeolocsftError(
                f"evaluate: distance must be 'haversine' or 'geodesic', got {self.distance!r}"
            )
        if not (math.isfinite(self.earth_radius_km) and self.earth_radius_km > 0):
            raise GeolocsftError(
                f"evaluate: earth_radius_km must be > 0, got {self.earth_radius_km!r}"
            )
        _check_int(self.bootstrap_resamples, "bootstrap_resamples", minimum=0)
        if not (0.0 < self.confidence < 1.0):
            raise GeolocsftError(
                f"evaluate: confidence must lie strictly between 0 and 1, got {self.confidence!r}"
            )
        _check_int(self.seed, "seed", minimum=0)
        _check_int(self.map_max_points, "map_max_points", minimum=0)

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> EvaluationSettings:
        """Settings from the ``evaluate`` section of the config (schema defaults filled in)."""
        values = dict(config)
        if "thresholds_km" in values and not isinstance(values["thresholds_km"], str | bytes):
            try:
                values["thresholds_km"] = tuple(values["thresholds_km"])
            except TypeError as exc:
                raise GeolocsftError(
                    f"evaluate: thresholds_km must be a list, got {values['thresholds_km']!r}"
                ) from exc
        return from_config(cls, values, "evaluate")


def default_settings() -> EvaluationSettings:
    """The ``evaluate`` settings with every value at its schema default."""
    return EvaluationSettings.from_mapping({})


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise GeolocsftError(f"evaluate: {name} must be an integer >= {minimum}, got {value!r}")


def accuracy_key(threshold_km: float) -> str:
    """Metric name of a threshold: ``acc@1km`` for 1 or 1.0, ``acc@0.5km`` for 0.5."""
    value = float(threshold_km)
    text = str(int(value)) if value.is_integer() else repr(value)
    return f"acc@{text}km"


@dataclass(frozen=True)
class AccuracyMetrics:
    """Metrics of one prediction set; ``None`` where a value is undefined (e.g. ``n == 0``).

    ``accuracy_pct[i]`` is the percent of all ``n`` rows within ``thresholds_km[i]`` km and
    ``ci_pct[i]`` its bootstrap interval (``None`` without resamples or rows).
    """

    n: int
    answered: int
    thresholds_km: tuple[float, ...]
    hits: tuple[int, ...]
    accuracy_pct: tuple[float | None, ...]
    ci_pct: tuple[tuple[float, float] | None, ...]
    median_km: float | None
    mean_km: float | None
    mean_geoscore: float | None
    settings: EvaluationSettings

    @property
    def answered_pct(self) -> float | None:
        return 100.0 * self.answered / self.n if self.n else None

    @property
    def accuracy(self) -> dict[str, float | None]:
        """``{"acc@1km": 12.5, ...}`` in threshold order."""
        return {
            accuracy_key(r): a for r, a in zip(self.thresholds_km, self.accuracy_pct, strict=True)
        }

    @property
    def ci(self) -> dict[str, list[float] | None]:
        """``{"acc@1km": [low, high], ...}``; ``None`` where there is no interval."""
        return {
            accuracy_key(r): (list(ci) if ci is not None else None)
            for r, ci in zip(self.thresholds_km, self.ci_pct, strict=True)
        }

    def to_dict(self) -> dict[str, Any]:
        """The metrics as a JSON-ready object (see the module docstring for the keys)."""
        s = self.settings
        return {
            "n": self.n,
            "answered": self.answered,
            "answered_pct": _finite_or_none(self.answered_pct),
            **{key: _finite_or_none(value) for key, value in self.accuracy.items()},
            "median_km": _finite_or_none(self.median_km),
            "mean_km": _finite_or_none(self.mean_km),
            "mean_geoscore": _finite_or_none(self.mean_geoscore),
            "ci": {
                key: ([_finite_or_none(v) for v in ci] if ci is not None else None)
                for key, ci in self.ci.items()
            },
            "distance": s.distance,
            "earth_radius_km": s.earth_radius_km,
            "thresholds_km": list(s.thresholds_km),
            "bootstrap_resamples": s.bootstrap_resamples,
            "confidence": s.confidence,
            "seed": s.seed,
            "hit_tolerance_km": HIT_TOLERANCE_KM,
        }


@dataclass(frozen=True)
class PredictionArrays:
    """Coordinates of a prediction table as float arrays.

    ``pred_lat``/``pred_lon`` are NaN where the row is unanswered (``answered`` is False).
    """

    pred_lat: FloatArray
    pred_lon: FloatArray
    true_lat: FloatArray
    true_lon: FloatArray
    answered: BoolArray


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
    outputs: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``accuracy.json``'s object without the file paths."""
        return {"label": self.label, **self.metrics.to_dict()}


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# Metrics


def compute_distances(
    arrays: PredictionArrays, settings: EvaluationSettings | None = None
) -> FloatArray:
    """Distance in km of every prediction from its truth; NaN where the row is unanswered."""
    settings = settings or default_settings()
    distances = distance_km(
        arrays.true_lat,
        arrays.true_lon,
        arrays.pred_lat,
        arrays.pred_lon,
        method=settings.distance,
        radius_km=settings.earth_radius_km,
    )
    return np.where(arrays.answered, distances, np.nan)


def bootstrap_accuracy_ci(
    hits: npt.ArrayLike,
    n: int,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> list[tuple[float, float] | None]:
    """Percentile bootstrap intervals, in percent, of the proportions ``hits / n``.

    Resampling ``n`` rows with replacement and counting the hits among them is the same, in
    distribution, as one draw of Binomial(n, k/n): each resampled row is a hit with probability
    k/n, independently. So instead of ``resamples`` passes over the rows we draw ``resamples``
    binomials per threshold from ``numpy.random.default_rng(seed)`` and take the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of ``100 * draws / n``. The
    result is identical in law to the row bootstrap and costs O(resamples), not
    O(resamples * n). The intervals are per threshold (marginal), not simultaneous.
    Returns ``None`` per threshold when ``n == 0`` or ``resamples == 0``.
    """
    counts = np.asarray(hits, dtype=np.int64).ravel()
    if n <= 0 or resamples <= 0:
        return [None] * counts.size
    if np.any(counts < 0) or np.any(counts > n):
        raise ValueError(f"hits must lie in [0, {n}], got {counts.tolist()}")
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, (counts / n)[:, None], size=(counts.size, resamples))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(100.0 * draws / n, [alpha, 1.0 - alpha], axis=1)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high, strict=True)]


def compute_metrics(
    distance: npt.ArrayLike, settings: EvaluationSettings | None = None
) -> AccuracyMetrics:
    """Acc@R, answered count, median/mean error and mean GeoScore of distances in km.

    ``distance`` has one entry per row, NaN for an unanswered row. Acc@R and the mean GeoScore
    are over **all** rows (an unanswered row is a miss and scores 0); median and mean error are
    over answered rows. Bootstrap intervals: see :func:`bootstrap_accuracy_ci`. Vectorised: one
    sort of the answered distances serves every threshold and the median.
    """
    settings = settings or default_settings()
    d = np.asarray(distance, dtype=np.float64).ravel()
    n = int(d.size)
    answered = np.sort(d[np.isfinite(d)])
    if answered.size and answered[0] < 0:
        raise ValueError("distances must be >= 0 km")
    thresholds = np.asarray(settings.thresholds_km, dtype=np.float64)
    hits = np.searchsorted(answered, thresholds + HIT_TOLERANCE_KM, side="right")
    accuracy = [100.0 * int(k) / n if n else None for k in hits]
    ci = bootstrap_accuracy_ci(
        hits,
        n,
        resamples=settings.bootstrap_resamples,
        confidence=settings.confidence,
        seed=settings.seed,
    )
    k = int(answered.size)
    if k:
        middle = k // 2
        median = float(answered[middle] if k % 2 else (answered[middle - 1] + answered[middle]) / 2)
        mean_km: float | None = float(answered.mean())
    else:
        median, mean_km = None, None
    # geoscore() gives 0 for NaN, i.e. for unanswered rows.
    mean_geoscore = float(geoscore(answered).sum() / n) if n else None
    return AccuracyMetrics(
        n=n,
        answered=k,
        thresholds_km=settings.thresholds_km,
        hits=tuple(int(h) for h in hits),
        accuracy_pct=tuple(accuracy),
        ci_pct=tuple(ci),
        median_km=None if k == 0 else median,
        mean_km=mean_km,
        mean_geoscore=mean_geoscore,
        settings=settings,
    )


def per_country_schema(settings: EvaluationSettings) -> dict[str, pl.DataType]:
    """Columns of ``per_country.csv``."""
    return {
        "country_code": pl.String(),
        "n": pl.Int64(),
        "answered": pl.Int64(),
        **{accuracy_key(r): pl.Float64() for r in settings.thresholds_km},
        "median_km": pl.Float64(),
        "mean_geoscore": pl.Float64(),
    }


def per_country_table(
    distance: npt.ArrayLike,
    country_code: pl.Series | Sequence[str | None] | None,
    settings: EvaluationSettings | None = None,
) -> pl.DataFrame:
    """Accuracy per country of the true location, largest country first.

    Same definitions as :func:`compute_metrics` within each country; null or empty codes are
    grouped under :data:`UNKNOWN_COUNTRY`. ``country_code=None`` (no country information)
    gives an empty table with the columns of :func:`per_country_schema`.
    """
    settings = settings or default_settings()
    schema = per_country_schema(settings)
    if country_code is None:
        return pl.DataFrame(schema=schema)
    d = np.asarray(distance, dtype=np.float64).ravel()
    codes = pl.Series("country_code", country_code, dtype=pl.String).str.strip_chars()
    if codes.len() != d.size:
        raise ValueError(f"{codes.len()} country codes for {d.size} distances")
    frame = pl.DataFrame(
        {
            "country_code": codes,
            "distance_km": pl.Series(d).fill_nan(None),
            "geoscore": geoscore(d),
        }
    ).with_columns(
        pl.when(pl.col("country_code").is_null() | (pl.col("country_code") == ""))
        .then(pl.lit(UNKNOWN_COUNTRY))
        .otherwise(pl.col("country_code"))
        .alias("country_code")
    )
    distance_col = pl.col("distance_km")
    table = (
        frame.group_by("country_code")
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            distance_col.is_not_null().sum().cast(pl.Int64).alias("answered"),
            *[
                ((distance_col <= r + HIT_TOLERANCE_KM).sum() * 100.0 / pl.len())
                .cast(pl.Float64)
                .alias(accuracy_key(r))
                for r in settings.thresholds_km
            ],
            distance_col.median().cast(pl.Float64).alias("median_km"),
            pl.col("geoscore").mean().cast(pl.Float64).alias("mean_geoscore"),
        )
        .sort(["n", "country_code"], descending=[True, False])
    )
    return table.select(list(schema)).cast(schema)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Reading and checking tables


def _require_columns(table: pl.DataFrame, required: Sequence[str], source: str, what: str) -> None:
    missing = [c for c in required if c not in table.columns]
    if missing:
        names = ", ".join(f"'{c}'" for c in missing)
        raise InputTableError(
            f"{source}: the {what} has no column {names} (needs {', '.join(required)}; "
            f"its columns are: {', '.join(table.columns) or 'none'})"
        )


def _as_float(series: pl.Series) -> FloatArray:
    values = series.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    return values.to_numpy().astype(np.float64, copy=False)


def _describe_rows(raw: pl.Series, bad: BoolArray) -> str:
    rows = np.flatnonzero(bad)
    shown = []
    for index in rows[:MAX_ROWS_IN_MESSAGE]:
        text = raw[int(index)]
        shown.append(
            f"{index + 1} (empty)"
            if text is None or not text.strip()
            else f"{index + 1} ({text!r})"
        )
    noun = "row" if rows.size == 1 else "rows"
    more = f" and {rows.size - MAX_ROWS_IN_MESSAGE} more" if rows.size > MAX_ROWS_IN_MESSAGE else ""
    return f"{noun} {', '.join(shown)}{more}"


def parse_prediction_table(table: pl.DataFrame, source: str = "<table>") -> PredictionArrays:
    """Coordinates of a text prediction table; unusable predictions become unanswered rows.

    Raises :class:`InputTableError` naming ``source``, the column and the first offending data
    rows (1-based, header excluded) for a missing column or an unusable ground truth.
    """
    _require_columns(table, REQUIRED_COLUMNS, source, "prediction table")
    true_lat = _as_float(table["true_lat"])
    true_lon = _as_float(table["true_lon"])
    problems = []
    for column, values, limit in (("true_lat", true_lat, 90.0), ("true_lon", true_lon, 180.0)):
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(values) & (np.abs(values) <= limit))
        if bad.any():
            problems.append(
                f"column '{column}' has {int(bad.sum())} unusable ground-truth value(s) "
                f"(empty, non-numeric or outside [-{limit:g}, {limit:g}]) in data "
                + _describe_rows(table[column], bad)
            )
    if problems:
        raise InputTableError(
            f"{source}: "
            + "; ".join(problems)
            + ". Data row 1 is the first row after the header; a prediction may be missing, "
            "the ground truth may not."
        )
    pred_lat = _as_float(table["pred_lat"])
    pred_lon = _as_float(table["pred_lon"])
    answered = valid_coordinates(pred_lat, pred_lon)
    return PredictionArrays(
        pred_lat=np.where(answered, pred_lat, np.nan),
        pred_lon=np.where(answered, pred_lon, np.nan),
        true_lat=true_lat,
        true_lon=true_lon,
        answered=answered,
    )


def attach_countries(
    table: pl.DataFrame, manifest_path: Path | None, source: str = "<table>"
) -> pl.DataFrame:
    """Add or complete ``country_code`` from a manifest (``image_id``, ``country_code``).

    The prediction table's own ``country_code`` wins where it is set; the manifest fills the
    rest, matched on ``image_id`` (as text). Ids missing from the manifest keep a null country
    (logged). Without a manifest the table is returned unchanged.
    """
    if manifest_path is None:
        return table
    manifest = read_text_table(manifest_path, "manifest")
    _require_columns(manifest, ("image_id", "country_code"), str(manifest_path), "manifest")
    _require_columns(table, ("image_id",), source, "prediction table (to join the manifest)")
    countries = manifest.select(
        pl.col("image_id"), pl.col("country_code").alias("__manifest_country")
    )
    duplicated = countries.height - countries["image_id"].n_unique()
    if duplicated:
        log.warning(
            "%s: %d duplicate image_id(s) in the manifest; using the first of each",
            manifest_path,
            duplicated,
        )
        countries = countries.unique("image_id", keep="first", maintain_order=True)
    joined = table.join(countries, on="image_id", how="left", maintain_order="left")
    unmatched = int(joined["__manifest_country"].is_null().sum())
    if unmatched:
        log.warning(
            "%s: %d of %d prediction rows have no country in %s (unknown image_id or null "
            "country); they are counted under '%s'",
            source,
            unmatched,
            joined.height,
            manifest_path,
            UNKNOWN_COUNTRY,
        )
    if "country_code" in table.columns:
        own = pl.col("country_code").str.strip_chars()
        country = pl.when(own.is_null() | (own == "")).then(pl.col("__manifest_country"))
        joined = joined.with_columns(
            country.otherwise(pl.col("country_code")).alias("country_code")
        )
    else:
        joined = joined.rename({"__manifest_country": "country_code"})
    return joined.drop("__manifest_country", strict=False)


# ---------------------------------------------------------------------------------------------
# Evaluation


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
    per_image = table.with_columns(
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
    ``manifest_path`` supplies ``country_code`` by ``image_id`` (see :func:`attach_countries`).
    The files written are listed in the module docstring; plots only when ``make_plots``.
    User-facing problems raise :class:`~geolocsft.errors.GeolocsftError`.
    """
    settings = settings or default_settings()
    pred = Path(pred_path)
    out = Path(out_dir)
    manifest = Path(manifest_path) if manifest_path is not None else None
    started = time.perf_counter()
    table = read_text_table(pred, "prediction table")
    table = attach_countries(table, manifest, str(pred))
    read_s = time.perf_counter() - started
    result = evaluate_table(
        table, settings, source=str(pred), label=label if label is not None else pred.stem
    )
    metrics_s = time.perf_counter() - started - read_s
    if result.metrics.n == 0:
        log.warning("%s: the prediction table has no rows", pred)
    paths = {name: out / file_name for name, file_name in OUTPUT_FILES.items()}
    if not make_plots:
        del paths["error_cdf"], paths["world_map"]
    document = {
        "label": result.label,
        "predictions": str(pred),
        "manifest": str(manifest) if manifest is not None else None,
        **result.metrics.to_dict(),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths["json"].write_text(
            json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        metrics_row(result.metrics, result.label).write_csv(paths["csv"])
        paths["md"].write_text(metrics_markdown(result.metrics, result.label), encoding="utf-8")
        result.per_image.write_csv(paths["per_image"])
        result.per_country.write_csv(paths["per_country"])
        written_s = time.perf_counter() - started
        if make_plots:
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
    except OSError as exc:
        raise GeolocsftError(f"{out}: cannot write the evaluation outputs: {exc}") from exc
    log.info(
        "%s: %d rows, %d answered; read %.2fs, scored %.2fs, wrote %.2fs, plots %.2fs -> %s",
        pred,
        result.metrics.n,
        result.metrics.answered,
        read_s,
        metrics_s,
        written_s - read_s - metrics_s,
        time.perf_counter() - started - written_s,
        out,
    )
    return replace(result, outputs=paths)


# ---------------------------------------------------------------------------------------------
# Tables for people and for spreadsheets


def metrics_row(metrics: AccuracyMetrics, label: str | None = None) -> pl.DataFrame:
    """``accuracy.csv``: one row of metrics with ``acc@<R>km_ci_low/_ci_high`` columns."""
    values = metrics.to_dict()
    row: dict[str, Any] = {"label": label}
    row.update({key: values[key] for key in ("n", "answered", "answered_pct")})
    row.update(metrics.accuracy)
    row.update({key: values[key] for key in ("median_km", "mean_km", "mean_geoscore")})
    schema: dict[str, pl.DataType] = {
        "label": pl.String(),
        "n": pl.Int64(),
        "answered": pl.Int64(),
    }
    for key, ci in metrics.ci.items():
        row[f"{key}_ci_low"] = ci[0] if ci else None
        row[f"{key}_ci_high"] = ci[1] if ci else None
    for key in ("distance", "earth_radius_km", "bootstrap_resamples", "confidence", "seed"):
        row[key] = values[key]
    schema.update({"distance": pl.String(), "bootstrap_resamples": pl.Int64(), "seed": pl.Int64()})
    full_schema = {key: schema.get(key, pl.Float64()) for key in row}
    return pl.DataFrame([row], schema=full_schema)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _fmt_threshold(threshold_km: float) -> str:
    return accuracy_key(threshold_km).removeprefix("acc@").removesuffix("km") + " km"


def metrics_markdown(metrics: AccuracyMetrics, label: str | None = None) -> str:
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
        f"{metrics.n} predictions, {metrics.answered} answered; distance: {distance}. "
        "Acc@R is the percent of all predictions within R km (an unanswered one is a miss); "
        f"{level}: percentile bootstrap, {s.bootstrap_resamples} resamples, seed {s.seed}.",
        "",
        f"| metric | value | {level} |",
        "|---|---:|---|",
        f"| n | {metrics.n} | |",
        f"| answered | {metrics.answered} ({_fmt(answered_pct, 2)}%) | |",
    ]
    for threshold, value, ci in zip(
        metrics.thresholds_km, metrics.accuracy_pct, metrics.ci_pct, strict=True
    ):
        interval = f"{_fmt(ci[0], 2)} – {_fmt(ci[1], 2)}" if ci else ""
        lines.append(f"| Acc@{_fmt_threshold(threshold)} (%) | {_fmt(value, 2)} | {interval} |")
    lines += [
        f"| median error, answered (km) | {_fmt(metrics.median_km, 1)} | |",
        f"| mean error, answered (km) | {_fmt(metrics.mean_km, 1)} | |",
        f"| mean GeoScore (0–5000) | {_fmt(metrics.mean_geoscore, 1)} | |",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Comparison of several evaluations

SUMMARY_LEADING_COLUMNS = ("predictor", "evalset", "n", "answered", "answered_pct")
SUMMARY_TRAILING_COLUMNS = ("median_km", "mean_km", "mean_geoscore")


def _load_accuracy_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputTableError(f"{path}: cannot read the accuracy file: {exc}") from exc
    if not isinstance(document, dict) or "n" not in document:
        raise InputTableError(f"{path}: not an accuracy.json written by geolocsft evaluate")
    return document


def write_summary(
    entries: Iterable[tuple[str, str, str | os.PathLike[str]]],
    out_csv: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
) -> pl.DataFrame:
    """Combine several ``accuracy.json`` files into one comparison table.

    ``entries`` are ``(predictor, evalset, path_to_accuracy.json)`` triples, one row each, in
    the given order. From the Snakemake rule ``evaluate_summary``::

        write_summary(
            [(e["predictor"], e["evalset"], path)
             for e, path in zip(snakemake.params.entries, snakemake.input, strict=True)],
            snakemake.output.csv,
            snakemake.output.md,
        )

    ``out_csv`` gets columns ``predictor, evalset, n, answered, answered_pct``, every
    ``acc@<R>km`` found (union in order of first appearance; null where a file lacks it),
    ``median_km, mean_km, mean_geoscore``, then ``acc@<R>km_ci_low``/``_ci_high`` and
    ``distance``. ``out_md`` is a markdown table with each Acc@R followed by its interval.
    Returns the CSV's table.
    """
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
    schema["distance"] = pl.String()
    records = []
    for row in rows:
        record: dict[str, Any] = {key: row.get(key) for key in schema}
        ci = row.get("ci") or {}
        for key in acc_keys:
            interval = ci.get(key) or [None, None]
            record[f"{key}_ci_low"], record[f"{key}_ci_high"] = interval[0], interval[1]
        records.append(record)
    table = pl.DataFrame(records, schema=schema)
    csv_path, md_path = Path(out_csv), Path(out_md)
    try:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        table.write_csv(csv_path)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(summary_markdown(table, acc_keys), encoding="utf-8")
    except OSError as exc:
        raise GeolocsftError(f"cannot write the evaluation summary: {exc}") from exc
    log.info("summary of %d evaluations -> %s, %s", table.height, csv_path, md_path)
    return table


def summary_markdown(table: pl.DataFrame, acc_keys: Sequence[str]) -> str:
    """The summary as markdown: one row per predictor and eval set, Acc@R with intervals."""
    headers = ["predictor", "eval set", "n", "answered"]
    headers += [f"Acc@{key.removeprefix('acc@').removesuffix('km')} km (%)" for key in acc_keys]
    headers += ["median error (km)", "mean GeoScore"]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(headers) - 2)) + "|",
    ]
    for row in table.iter_rows(named=True):
        cells = [str(row["predictor"]), str(row["evalset"]), str(row["n"]), str(row["answered"])]
        for key in acc_keys:
            cell = _fmt(row[key], 2)
            low, high = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
            if low is not None and high is not None:
                cell += f" [{_fmt(low, 2)}, {_fmt(high, 2)}]"
            cells.append(cell)
        cells += [_fmt(row["median_km"], 1), _fmt(row["mean_geoscore"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "Acc@R: percent of all images within R km (unanswered = miss), with bootstrap "
        "confidence interval in brackets.\n\n" + "\n".join(lines) + "\n"
    )
