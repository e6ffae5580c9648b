"""Acc@R, answered share, median and mean error and mean GeoScore of a set of distances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from geolocsft.evaluation.intervals import Interval, accuracy_intervals
from geolocsft.evaluation.settings import (
    MISS_DISTANCE_KM,
    EvaluationSettings,
    accuracy_key,
    default_settings,
    finite_or_none,
)
from geolocsft.geo import HIT_TOLERANCE_KM, FloatArray, distance_km, geoscore

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class PredictionArrays:
    """Coordinates of a prediction table as float arrays.

    ``pred_lat``/``pred_lon`` are NaN where the row is unanswered (``answered`` is False);
    ``lon_wrapped`` predicted longitudes were in 0..360 and have been moved to -180..180.
    """

    pred_lat: FloatArray
    pred_lon: FloatArray
    true_lat: FloatArray
    true_lon: FloatArray
    answered: BoolArray
    lon_wrapped: int


@dataclass(frozen=True)
class AccuracyMetrics:
    """Metrics of one prediction set; ``None`` where a value is undefined (e.g. ``n == 0``).

    ``accuracy_pct[i]`` is the percent of all ``n`` rows within ``thresholds_km[i]`` km and
    ``ci_pct[i]`` its interval (``settings.interval``; ``None`` without rows, or for the
    bootstrap without resamples). ``median_km``/``mean_km`` are over answered rows;
    ``median_all_km`` over all rows, a miss counting as :data:`MISS_DISTANCE_KM`.
    """

    n: int
    answered: int
    thresholds_km: tuple[float, ...]
    hits: tuple[int, ...]
    accuracy_pct: tuple[float | None, ...]
    ci_pct: tuple[Interval | None, ...]
    median_km: float | None
    median_all_km: float | None
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
        """The metrics as a JSON-ready object (see :mod:`geolocsft.evaluate` for the keys)."""
        s = self.settings
        return {
            "n": self.n,
            "answered": self.answered,
            "answered_pct": finite_or_none(self.answered_pct),
            **{key: finite_or_none(value) for key, value in self.accuracy.items()},
            "median_km": finite_or_none(self.median_km),
            "median_all_km": finite_or_none(self.median_all_km),
            "mean_km": finite_or_none(self.mean_km),
            "mean_geoscore": finite_or_none(self.mean_geoscore),
            "ci": {
                key: ([finite_or_none(v) for v in ci] if ci is not None else None)
                for key, ci in self.ci.items()
            },
            "interval": s.interval,
            "distance": s.distance,
            "earth_radius_km": s.earth_radius_km,
            "thresholds_km": list(s.thresholds_km),
            "bootstrap_resamples": s.bootstrap_resamples,
            "confidence": s.confidence,
            "seed": s.seed,
            "hit_tolerance_km": HIT_TOLERANCE_KM,
            "miss_distance_km": MISS_DISTANCE_KM,
        }


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


def hits_within(distance: npt.ArrayLike, threshold_km: float) -> BoolArray:
    """Whether each row's prediction lies within ``threshold_km`` (a NaN distance never does)."""
    d = np.asarray(distance, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return d <= threshold_km + HIT_TOLERANCE_KM


def _median_of_sorted(values: FloatArray) -> float:
    k = values.size
    middle = k // 2
    return float(values[middle] if k % 2 else (values[middle - 1] + values[middle]) / 2)


def compute_metrics(
    distance: npt.ArrayLike, settings: EvaluationSettings | None = None
) -> AccuracyMetrics:
    """Acc@R, answered count, median/mean error and mean GeoScore of distances in km.

    ``distance`` has one entry per row, NaN for an unanswered row. Acc@R and the mean GeoScore
    are over **all** rows (an unanswered row is a miss and scores 0); ``median_km`` and
    ``mean_km`` are over answered rows, ``median_all_km`` over all rows with each miss (and any
    error beyond it) at :data:`MISS_DISTANCE_KM`. Intervals: see
    :mod:`geolocsft.evaluation.intervals`. Vectorised: one sort of the answered distances serves
    every threshold and both medians.
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
    ci = accuracy_intervals(
        hits,
        n,
        method=settings.interval,
        resamples=settings.bootstrap_resamples,
        confidence=settings.confidence,
        seed=settings.seed,
    )
    k = int(answered.size)
    median = _median_of_sorted(answered) if k else None
    mean_km = float(answered.mean()) if k else None
    if n:
        # Sorted answered distances, capped, then the misses at the cap: still sorted.
        capped = np.minimum(answered, MISS_DISTANCE_KM)
        every = np.concatenate([capped, np.full(n - k, MISS_DISTANCE_KM)])
        median_all: float | None = _median_of_sorted(every)
    else:
        median_all = None
    # geoscore() gives 0 for NaN, i.e. for unanswered rows.
    mean_geoscore = float(geoscore(answered).sum() / n) if n else None
    return AccuracyMetrics(
        n=n,
        answered=k,
        thresholds_km=settings.thresholds_km,
        hits=tuple(int(h) for h in hits),
        accuracy_pct=tuple(accuracy),
        ci_pct=tuple(ci),
        median_km=median,
        median_all_km=median_all,
        mean_km=mean_km,
        mean_geoscore=mean_geoscore,
        settings=settings,
    )
