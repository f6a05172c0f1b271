"""Nonparametric bootstrap: resample rows with replacement, refit, and summarise the spread.

Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13) of the refitted estimates.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from analysis.errors import FitError
from analysis.result import FitResult


def resample_indices(n: int, resamples: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement; within each stratum when `strata` is given."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(resamples, n))
    out = np.empty((resamples, n), dtype=int)
    for label in np.unique(strata):
        members = np.flatnonzero(strata == label)
        out[:, members] = members[rng.integers(0, members.size, size=(resamples, members.size))]
    return out


def refit_each(refit: Callable[[np.ndarray], dict[str, float]], indices: np.ndarray,
               names: list[str]) -> tuple[np.ndarray, int]:
    """Estimates (ok resamples, params) from `refit(rows)` per resample; draws that cannot be fitted are counted."""
    rows, failed = [], 0
    for draw in indices:
        try:
            estimate = refit(draw)
        except FitError:
            failed += 1
            continue
        rows.append([estimate[name] for name in names])
    return np.array(rows, dtype=float).reshape(-1, len(names)), failed


def attach(result: FitResult, samples: np.ndarray, requested: int, failed: int, level: float = 0.95) -> FitResult:
    """Fill `result`'s ci/se from bootstrap `samples` (columns in result.params order). No interval
    when under a tenth of the resamples (or under 2) could be refitted, or when those that could
    all gave the same estimates: such draws are the original one again (e.g. an IsoFLOP budget of
    exactly 3 sizes keeps all 3 in 2 of 9 draws), and a zero-width interval would read as a
    certainty the data does not have."""
    result.samples = samples
    result.bootstrap = requested
    result.bootstrap_failed = failed
    result.ci_level = level
    finite = samples[np.all(np.isfinite(samples), axis=1)]
    if len(finite) < max(2, requested / 10) or not np.ptp(finite, axis=0).any():
        result.ci, result.se, result.samples = {}, {}, samples[:0]  # nor a band in the figures
        return result
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail], axis=0)
    spread = finite.std(axis=0, ddof=1)
    names = list(result.params)
    result.ci = {name: (float(low[i]), float(high[i])) for i, name in enumerate(names)}
    result.se = {name: float(spread[i]) for i, name in enumerate(names)}
    return result


def band(predict: Callable[[np.ndarray], np.ndarray], samples: np.ndarray,
         level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise percentile band of predictions `predict(sample_row)` over the bootstrap samples."""
    if samples is None or len(samples) < 2:
        return None
    curves = np.array([predict(row) for row in samples])
    curves = curves[np.all(np.isfinite(curves), axis=1)]
    if len(curves) < 2:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(curves, [tail, 100 - tail], axis=0)
    return low, high
