"""Statistics a reviewer asks for: a mean with its 95 % confidence interval, and a paired comparison.

Both work on per-case Dice (NaN cases — nothing in prediction or truth — left out, pairwise for the
comparison). Intervals are percentile bootstraps over cases (seeded, so a report is reproducible);
the paired test is the Wilcoxon signed-rank test on the per-case differences (SciPy), with a
bootstrap interval of the mean difference beside it.

>>> low, mean, high = mean_ci([0.5, 0.6, 0.7, 0.8], resamples=2000)
>>> round(mean, 2), low < mean < high
(0.65, True)
>>> result = paired_comparison([0.6, 0.7, 0.8, 0.9, 0.7, 0.8], [0.5, 0.6, 0.75, 0.7, 0.6, 0.7])
>>> result.n, round(result.mean_difference, 3), result.p_value < 0.05
(6, 0.108, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def mean_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000,
            seed: int = 0) -> tuple[float, float, float]:
    """``(low, mean, high)``: the mean of the finite values and its percentile-bootstrap interval."""
    finite = _finite(values)
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(finite.mean())
    if finite.size == 1:
        return math.nan, mean, math.nan
    rng = np.random.default_rng(seed)
    means = finite[rng.integers(0, finite.size, size=(resamples, finite.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), mean, float(np.quantile(means, 1 - alpha))


def bootstrap_ci(statistic: Callable[[np.ndarray], float], size: int, confidence: float = 0.95,
                 resamples: int = 2_000, seed: int = 0) -> tuple[float, float, float]:
    """``(low, value, high)``: ``statistic(indices)`` on all ``size`` items and its percentile-bootstrap interval.

    ``statistic`` takes an index array (items drawn with replacement) and returns a number; resamples
    where it is NaN (e.g. an AUC of a resample holding one class only) are left out.

    >>> scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2, 0.9, 0.6])
    >>> low, value, high = bootstrap_ci(lambda i: float(scores[i].max()), scores.size, resamples=500)
    >>> value, low <= value, high == value
    (0.9, True, True)
    """
    value = float(statistic(np.arange(size)))
    if size < 2:
        return math.nan, value, math.nan
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(rng.integers(0, size, size=size)) for _ in range(resamples)], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return math.nan, value, math.nan
    alpha = (1 - confidence) / 2
    return float(np.quantile(draws, alpha)), value, float(np.quantile(draws, 1 - alpha))


@dataclass(frozen=True)
class PairedComparison:
    """``a`` against ``b`` on the same cases: mean difference (a − b), its 95 % CI, Wilcoxon p, wins."""

    n: int
    mean_difference: float
    low: float
    high: float
    p_value: float
    wins: int  # cases where a > b

    def text(self) -> str:
        return (f"{self.mean_difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}], "
                f"Wilcoxon p = {self.p_value:.3g}, better on {self.wins}/{self.n}")


def paired_comparison(a: Sequence[float], b: Sequence[float], seed: int = 0) -> PairedComparison:
    """Compare per-case scores of two arms on the same cases (pairs with a NaN are dropped)."""
    from scipy.stats import wilcoxon

    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"paired scores need the same cases: {first.size} vs {second.size}")
    keep = np.isfinite(first) & np.isfinite(second)
    difference = first[keep] - second[keep]
    if difference.size == 0:
        return PairedComparison(0, math.nan, math.nan, math.nan, math.nan, 0)
    low, mean, high = mean_ci(difference, seed=seed)
    p_value = float(wilcoxon(difference).pvalue) if difference.size > 1 and np.any(difference != 0) else 1.0
    return PairedComparison(int(difference.size), mean, low, high, p_value, int((difference > 0).sum()))
