"""The loss frontier L(C): the lower envelope of final loss over training compute across runs,
and a saturating power law fitted to it."""

from __future__ import annotations

import numpy as np

from analysis import bootstrap as boot
from analysis import power
from analysis.checks import as_positive, require_points, same_length
from analysis.errors import FitError
from analysis.result import FitResult


def lower_envelope(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Mask of runs that beat every run of smaller or equal compute (the compute-loss Pareto front)."""
    order = np.lexsort((loss, compute))  # by compute, ties by loss
    best_so_far = np.inf
    mask = np.zeros(len(compute), dtype=bool)
    for i in order:
        if loss[i] < best_so_far:
            mask[i] = True
            best_so_far = loss[i]
    return mask


def fit_frontier(compute: object, loss: object, *, bootstrap: int = 100, seed: int = 0,
                 ci_level: float = 0.95) -> FitResult:
    """Falling power law L = E + A C^-alpha through the frontier runs; bootstrap resamples all runs
    and recomputes the envelope each time."""
    compute = as_positive(compute, "C (compute)")
    loss = as_positive(loss, "loss")
    count = same_length(C=compute, loss=loss)
    on_front = lower_envelope(compute, loss)
    require_points(int(on_front.sum()), power.MIN_POINTS, "frontier (runs on the lower envelope)")
    base = power.fit_power(compute[on_front], loss[on_front], direction="falling", bootstrap=0,
                           x_name="C (compute)", y_name="loss")
    result = FitResult(form="frontier", params=base.params, n_points=int(on_front.sum()),
                       objective=base.objective, goodness=base.goodness, ci_level=ci_level,
                       extra={"direction": "falling", "runs": count,
                              "frontier_rows": np.flatnonzero(on_front).tolist()})
    if bootstrap <= 0:
        return result

    def refit(rows: np.ndarray) -> dict[str, float]:
        c, l = compute[rows], loss[rows]
        front = lower_envelope(c, l)
        if np.unique(c[front]).size < power.MIN_POINTS:
            raise FitError("resample has too few frontier points")
        return power._fit_arrays(c[front], l[front], "falling", alpha_hint=base.params["alpha"])[0]

    samples, failed = boot.refit_each(refit, boot.resample_indices(count, bootstrap, seed), power.PARAMS)
    return boot.attach(result, samples, bootstrap, failed, ci_level)
