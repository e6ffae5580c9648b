"""Predictors compared on the same images: differences in Acc@R with paired intervals.

Two predictors evaluated on one eval set answer for the same images (the workflow joins every
prediction file on the eval set's manifest), so their difference is measured per image: a
paired comparison is far tighter than two separate intervals, and it is the comparison a
reviewer asks for. See :func:`geolocsft.evaluation.intervals.paired_difference`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from geolocsft.errors import InputTableError
from geolocsft.evaluation.intervals import PairedDifference, paired_difference
from geolocsft.evaluation.metrics import hits_within
from geolocsft.evaluation.settings import EvaluationSettings, accuracy_key

log = logging.getLogger(__name__)

PAIRED_SCHEMA: dict[str, pl.DataType] = {
    "evalset": pl.String(),
    "predictor_a": pl.String(),
    "predictor_b": pl.String(),
    "metric": pl.String(),
    "threshold_km": pl.Float64(),
    "n": pl.Int64(),
    "acc_a": pl.Float64(),
    "acc_b": pl.Float64(),
    "difference_pp": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "ci_method": pl.String(),
    "both_hit": pl.Int64(),
    "only_a_hit": pl.Int64(),
    "only_b_hit": pl.Int64(),
    "neither_hit": pl.Int64(),
    "p_value_mcnemar": pl.Float64(),
    "comparison": pl.String(),
}


@dataclass(frozen=True)
class Outcomes:
    """One predictor's per-image distances on one eval set (NaN = unanswered)."""

    predictor: str
    evalset: str
    image_id: pl.Series
    distance_km: np.ndarray


def read_outcomes(predictor: str, evalset: str, path: Path) -> Outcomes:
    """``image_id`` and ``distance_km`` of an evaluation's ``per_image.csv``."""
    try:
        table = pl.read_csv(
            path,
            columns=["image_id", "distance_km"],
            schema_overrides={"image_id": pl.String, "distance_km": pl.Float64},
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputTableError(
            f"{path}: cannot read image_id and distance_km of the per-image table: {exc}"
        ) from exc
    return Outcomes(
        predictor,
        evalset,
        table["image_id"],
        table["distance_km"].fill_null(np.nan).to_numpy(),
    )


def _aligned(a: Outcomes, b: Outcomes) -> tuple[np.ndarray, np.ndarray]:
    """Distances of A and B on the images both have, in A's order."""
    if a.image_id.len() == b.image_id.len() and a.image_id.equals(b.image_id):
        return a.distance_km, b.distance_km
    left = pl.DataFrame({"image_id": a.image_id, "a": a.distance_km})
    right = pl.DataFrame({"image_id": b.image_id, "b": b.distance_km})
    joined = left.join(right, on="image_id", how="inner", maintain_order="left")
    log.warning(
        "%s: %s and %s answered for different images (%d and %d); compared on the %d in common",
        a.evalset,
        a.predictor,
        b.predictor,
        a.image_id.len(),
        b.image_id.len(),
        joined.height,
    )
    return joined["a"].to_numpy(), joined["b"].to_numpy()


def compare(
    a: Outcomes, b: Outcomes, settings: EvaluationSettings, comparison: str
) -> list[dict[str, object]]:
    """One row per threshold: A minus B on the images both were evaluated on."""
    dist_a, dist_b = _aligned(a, b)
    rows = []
    for threshold in settings.thresholds_km:
        hits_a, hits_b = hits_within(dist_a, threshold), hits_within(dist_b, threshold)
        result: PairedDifference = paired_difference(
            hits_a,
            hits_b,
            resamples=settings.bootstrap_resamples,
            confidence=settings.confidence,
            seed=settings.seed,
        )
        n = result.n
        rows.append(
            {
                "evalset": a.evalset,
                "predictor_a": a.predictor,
                "predictor_b": b.predictor,
                "metric": accuracy_key(threshold),
                "threshold_km": threshold,
                "n": n,
                "acc_a": 100.0 * (result.both + result.only_a) / n if n else None,
                "acc_b": 100.0 * (result.both + result.only_b) / n if n else None,
                "difference_pp": result.difference,
                "ci_low": result.ci[0] if result.ci else None,
                "ci_high": result.ci[1] if result.ci else None,
                "ci_method": result.method,
                "both_hit": result.both,
                "only_a_hit": result.only_a,
                "only_b_hit": result.only_b,
                "neither_hit": result.neither,
                "p_value_mcnemar": result.p_value,
                "comparison": comparison,
            }
        )
    return rows


def all_pairs(outcomes: Sequence[Outcomes], settings: EvaluationSettings) -> pl.DataFrame:
    """Every pair of predictors on each eval set (A before B in the given order)."""
    rows: list[dict[str, object]] = []
    by_evalset: dict[str, list[Outcomes]] = {}
    for item in outcomes:
        by_evalset.setdefault(item.evalset, []).append(item)
    for group in by_evalset.values():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                rows += compare(a, b, settings, "pair")
    return pl.DataFrame(rows, schema=PAIRED_SCHEMA)


def versus_best_baseline(
    outcomes: Sequence[Outcomes], baselines: Sequence[str], settings: EvaluationSettings
) -> pl.DataFrame:
    """Each predictor minus the best baseline of its eval set, threshold by threshold.

    The best baseline at R is the baseline with the highest Acc@R on that eval set (the first
    in order on a tie); a baseline is compared with the best of the others.
    """
    rows: list[dict[str, object]] = []
    by_evalset: dict[str, list[Outcomes]] = {}
    for item in outcomes:
        by_evalset.setdefault(item.evalset, []).append(item)
    for group in by_evalset.values():
        floor = [o for o in group if o.predictor in baselines]
        for threshold in settings.thresholds_km:
            one = replace(settings, thresholds_km=(threshold,))
            for item in group:
                others = [o for o in floor if o is not item]
                if not others:
                    continue
                scores = [int(hits_within(o.distance_km, threshold).sum()) for o in others]
                best = others[int(np.argmax(scores))]
                rows += compare(item, best, one, "vs best baseline")
    return pl.DataFrame(rows, schema=PAIRED_SCHEMA)
