"""Confidence intervals of Acc@R, alone and as a paired difference between two predictors.

Every interval here is in percent and holds at the edges: with 0 or n hits out of n, an Acc@R
interval still has width (a resample of an all-miss set can never hit, so a plain percentile
bootstrap collapses to [0, 0] there; the Wilson score interval does not).

* :func:`wilson_intervals`: the Wilson score interval of k/n (the default).
* :func:`bootstrap_accuracy_ci`: percentile bootstrap; where every resample equals the estimate
  (0 or n hits) the Wilson interval is used instead: the *floor*.
* :func:`paired_difference`: Acc@R of predictor A minus that of B on the **same** images, with a
  paired bootstrap percentile interval (images resampled together for both predictors), floored
  by Newcombe's score interval for paired proportions where the bootstrap has nothing to
  resample (no image on which the two disagree), and McNemar's exact p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

Interval = tuple[float, float]


def z_value(confidence: float) -> float:
    """The standard normal quantile of a two-sided ``confidence`` level (1.96 for 0.95)."""
    return NormalDist().inv_cdf((1.0 + confidence) / 2.0)


def _wilson(k: npt.ArrayLike, n: int, z: float) -> tuple[npt.NDArray[np.float64], ...]:
    """Wilson score limits of proportions k/n (fractions, not percent)."""
    counts = np.asarray(k, dtype=np.float64)
    p = counts / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0 or n hits the limit on that side is exactly 0 or 1 (not a rounding residue).
    low = np.where(counts == 0, 0.0, np.clip(centre - half, 0.0, 1.0))
    high = np.where(counts == n, 1.0, np.clip(centre + half, 0.0, 1.0))
    return low, high


def wilson_intervals(hits: npt.ArrayLike, n: int, confidence: float) -> list[Interval | None]:
    """Wilson score intervals, in percent, of the proportions ``hits / n`` (``None`` if n = 0).

    Exact at the edges in the sense that matters: 0 hits gives [0, u] with u > 0, n hits
    [l, 100] with l < 100.
    """
    counts = np.asarray(hits, dtype=np.int64).ravel()
    if n <= 0:
        return [None] * counts.size
    _check_counts(counts, n)
    low, high = _wilson(counts, n, z_value(confidence))
    return [(float(100 * lo), float(100 * hi)) for lo, hi in zip(low, high, strict=True)]


def _check_counts(counts: npt.NDArray[np.int64], n: int) -> None:
    if np.any(counts < 0) or np.any(counts > n):
        raise ValueError(f"hits must lie in [0, {n}], got {counts.tolist()}")


def bootstrap_accuracy_ci(
    hits: npt.ArrayLike,
    n: int,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> list[Interval | None]:
    """Percentile bootstrap intervals, in percent, of the proportions ``hits / n``.

    Resampling ``n`` rows with replacement and counting the hits among them is the same, in
    distribution, as one draw of Binomial(n, k/n): each resampled row is a hit with probability
    k/n, independently. So instead of ``resamples`` passes over the rows we draw ``resamples``
    binomials per threshold from ``numpy.random.default_rng(seed)`` and take the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of ``100 * draws / n``. The
    result is identical in law to the row bootstrap and costs O(resamples), not
    O(resamples * n). The intervals are per threshold (marginal), not simultaneous.

    At 0 or n hits every resample equals the estimate; there the Wilson interval is returned
    (the floor). Returns ``None`` per threshold when ``n == 0`` or ``resamples == 0``.
    """
    counts = np.asarray(hits, dtype=np.int64).ravel()
    if n <= 0 or resamples <= 0:
        return [None] * counts.size
    _check_counts(counts, n)
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, (counts / n)[:, None], size=(counts.size, resamples))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(100.0 * draws / n, [alpha, 1.0 - alpha], axis=1)
    wilson = wilson_intervals(counts, n, confidence)
    return [
        floor if k in (0, n) else (float(lo), float(hi))
        for k, lo, hi, floor in zip(counts, low, high, wilson, strict=True)
    ]


@dataclass(frozen=True)
class PairedDifference:
    """Acc@R of A minus Acc@R of B on the same ``n`` images, in percentage points.

    ``both``/``only_a``/``only_b``/``neither``: images that both, only A, only B or neither
    placed within R km. ``ci`` is the paired bootstrap percentile interval (``method``
    ``"paired bootstrap"``) or Newcombe's score interval (``"newcombe"``) where the bootstrap
    is degenerate or switched off. ``p_value``: McNemar's exact two-sided test of
    ``only_a`` vs ``only_b`` (1.0 when they never disagree).
    """

    n: int
    both: int
    only_a: int
    only_b: int
    neither: int
    difference: float | None
    ci: Interval | None
    method: str
    p_value: float | None


def newcombe_paired_interval(
    both: int, only_a: int, only_b: int, neither: int, confidence: float
) -> Interval:
    """Newcombe's (1998, method 10) score interval of a difference of paired proportions, in
    percentage points: the Wilson limits of each proportion combined with their correlation."""
    n = both + only_a + only_b + neither
    z = z_value(confidence)
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1,), (u1,) = _wilson([both + only_a], n, z)
    (l2,), (u2,) = _wilson([both + only_b], n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    delta = p1 - p2
    below = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    above = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    low = max(-1.0, delta - math.sqrt(max(below, 0.0)))
    high = min(1.0, delta + math.sqrt(max(above, 0.0)))
    return 100.0 * low, 100.0 * high


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: 2 * P(X <= min) for X ~ Binomial(only_a + only_b, 1/2)."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    k = min(only_a, only_b)
    # log C(m, i) for i = 0..k by a cumulative sum; then a stable log-sum-exp of the tail.
    i = np.arange(1, k + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log((m - i + 1) / i))])
    log_terms = log_choose - m * math.log(2.0)
    top = float(log_terms.max())
    tail = math.exp(top) * float(np.exp(log_terms - top).sum())
    return min(1.0, 2.0 * tail)


def paired_difference(
    hits_a: npt.ArrayLike,
    hits_b: npt.ArrayLike,
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> PairedDifference:
    """Acc of A minus Acc of B (percentage points) on the same images, with its interval.

    ``hits_a[i]`` and ``hits_b[i]`` say whether A and B placed image i within R km. The paired
    bootstrap resamples images (both predictors' outcomes together); the difference of a
    resample depends only on how many drawn images fall into each of the four outcome cells, so
    it is drawn as Multinomial(n, cell shares), identical in law to resampling rows and
    O(resamples).
    """
    a = np.asarray(hits_a, dtype=bool).ravel()
    b = np.asarray(hits_b, dtype=bool).ravel()
    if a.size != b.size:
        raise ValueError(f"{a.size} outcomes of A but {b.size} of B: not the same images")
    n = int(a.size)
    both = int(np.sum(a & b))
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    neither = n - both - only_a - only_b
    if n == 0:
        return PairedDifference(0, 0, 0, 0, 0, None, None, "none", None)
    difference = 100.0 * (only_a - only_b) / n
    ci: Interval
    if resamples > 0 and only_a + only_b > 0:
        rng = np.random.default_rng(seed)
        cells = rng.multinomial(n, [only_a / n, only_b / n, (both + neither) / n], size=resamples)
        draws = 100.0 * (cells[:, 0] - cells[:, 1]) / n
        alpha = (1.0 - confidence) / 2.0
        low, high = np.quantile(draws, [alpha, 1.0 - alpha])
        ci, method = (float(low), float(high)), "paired bootstrap"
    else:
        ci = newcombe_paired_interval(both, only_a, only_b, neither, confidence)
        method = "newcombe"
    return PairedDifference(
        n=n,
        both=both,
        only_a=only_a,
        only_b=only_b,
        neither=neither,
        difference=difference,
        ci=ci,
        method=method,
        p_value=mcnemar_exact_p(only_a, only_b),
    )


def accuracy_intervals(
    hits: Sequence[int] | npt.ArrayLike,
    n: int,
    *,
    method: str,
    resamples: int,
    confidence: float,
    seed: int,
) -> list[Interval | None]:
    """The configured interval of each Acc@R (``method``: ``wilson`` or ``bootstrap``)."""
    if method == "wilson":
        return wilson_intervals(hits, n, confidence)
    return bootstrap_accuracy_ci(hits, n, resamples=resamples, confidence=confidence, seed=seed)
