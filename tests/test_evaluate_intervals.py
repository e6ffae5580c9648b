"""Intervals that hold at the edges, paired comparisons, and the two medians."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geolocsft.evaluate import (
    EvaluationSettings,
    bootstrap_accuracy_ci,
    compute_metrics,
    metrics_markdown,
    paired_difference,
    wilson_intervals,
)
from geolocsft.evaluation.intervals import mcnemar_exact_p, newcombe_paired_interval
from geolocsft.settings import configured


def test_wilson_interval_has_width_at_zero_and_at_n_hits() -> None:
    (none,), (every,) = wilson_intervals([0], 10, 0.95), wilson_intervals([10], 10, 0.95)
    assert none is not None and every is not None
    assert none[0] == 0.0 and none[1] == pytest.approx(27.75, abs=0.01)  # textbook value
    assert every[1] == 100.0 and every[0] == pytest.approx(72.25, abs=0.01)
    (middle,) = wilson_intervals([30], 100, 0.95)
    assert middle == pytest.approx((21.90, 39.59), abs=0.01)


def test_wilson_interval_covers_the_true_share_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(0)
    for p, n in ((0.02, 150), (0.3, 60), (0.97, 200)):
        hits = rng.binomial(n, p, size=4000)
        intervals = np.array(wilson_intervals(hits, n, 0.95), dtype=float)
        covered = np.mean((intervals[:, 0] <= 100 * p) & (100 * p <= intervals[:, 1]))
        assert 0.92 <= covered <= 0.99, (p, n, covered)


def test_bootstrap_interval_is_floored_by_wilson_where_resamples_cannot_vary() -> None:
    for k in (0, 25):
        (boot,) = bootstrap_accuracy_ci([k], 25, resamples=500, confidence=0.95, seed=1)
        (wilson,) = wilson_intervals([k], 25, 0.95)
        assert boot == wilson and boot is not None and boot[1] - boot[0] > 10


def test_metrics_use_the_configured_interval() -> None:
    distances = np.array([1.0] * 3 + [5000.0] * 7)
    settings = configured(EvaluationSettings, thresholds_km=(25.0,))
    assert compute_metrics(distances, settings).ci_pct[0] == wilson_intervals([3], 10, 0.95)[0]
    boot = configured(EvaluationSettings, thresholds_km=(25.0,), interval="bootstrap")
    assert compute_metrics(distances, boot).ci_pct[0] != wilson_intervals([3], 10, 0.95)[0]


def test_paired_shortcut_matches_resampling_images() -> None:
    rng = np.random.default_rng(4)
    n = 300
    a = rng.random(n) < 0.4
    b = np.where(rng.random(n) < 0.8, a, ~a)  # B agrees with A on most images
    resamples = 4000
    picks = rng.integers(0, n, size=(resamples, n))
    literal = 100.0 * (a[picks].mean(axis=1) - b[picks].mean(axis=1))
    expected = np.quantile(literal, [0.025, 0.975])
    result = paired_difference(a, b, resamples=resamples, confidence=0.95, seed=2)
    assert result.method == "paired bootstrap"
    assert result.difference == pytest.approx(100.0 * (a.mean() - b.mean()))
    assert result.ci == pytest.approx(tuple(expected), abs=0.8)


def test_pairing_is_tighter_than_two_separate_intervals() -> None:
    rng = np.random.default_rng(5)
    a = rng.random(1000) < 0.5
    b = a.copy()
    b[np.flatnonzero(~a)[:40]] = True  # B = A plus 40 more hits
    paired = paired_difference(b, a, resamples=2000, confidence=0.95, seed=0)
    assert paired.ci is not None and paired.difference == pytest.approx(4.0)
    assert paired.ci[0] > 0  # significant when paired...
    (ia,), (ib,) = wilson_intervals([a.sum()], 1000, 0.95), wilson_intervals([b.sum()], 1000, 0.95)
    assert ia is not None and ib is not None and ia[1] > ib[0]  # ...though the intervals overlap
    assert paired.p_value is not None and paired.p_value < 1e-9


def test_no_disagreement_gives_newcombe_interval_not_a_point() -> None:
    same = np.array([True] * 7 + [False] * 13)
    result = paired_difference(same, same, resamples=1000, confidence=0.95, seed=0)
    assert result.method == "newcombe" and result.difference == 0.0
    assert result.ci is not None and result.ci[0] < 0 < result.ci[1]
    assert result.p_value == 1.0


def test_newcombe_matches_the_normal_interval_on_large_samples() -> None:
    both, only_a, only_b, neither = 3000, 600, 400, 6000
    n = both + only_a + only_b + neither
    low, high = newcombe_paired_interval(both, only_a, only_b, neither, 0.95)
    diff = (only_a - only_b) / n
    se = math.sqrt((only_a + only_b) / n - diff**2) / math.sqrt(n)
    assert low == pytest.approx(100 * (diff - 1.96 * se), abs=0.05)
    assert high == pytest.approx(100 * (diff + 1.96 * se), abs=0.05)


def test_mcnemar_exact_p_value() -> None:
    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact_p(3, 3) == 1.0
    assert mcnemar_exact_p(0, 0) == 1.0
    assert 0 < mcnemar_exact_p(60_000, 59_000) < 0.01  # large counts stay finite


def test_median_over_answered_and_over_all_images() -> None:
    settings = configured(EvaluationSettings)
    m = compute_metrics([10.0, np.nan, np.nan], settings)
    assert m.median_km == 10.0 and m.median_all_km == 20_000.0
    m = compute_metrics([10.0, 30.0, 20_010.0, np.nan], settings)
    assert m.median_km == 30.0
    assert m.median_all_km == pytest.approx((30.0 + 20_000.0) / 2)  # errors capped at 20,000 km
    assert compute_metrics([], settings).median_all_km is None
    text = metrics_markdown(compute_metrics([5.0, np.nan], settings), "x")
    assert "| median error, answered only (km) | 5.0 |" in text
    assert "| median error, all images, miss = 20,000 km (km) | 10002.5 |" in text
