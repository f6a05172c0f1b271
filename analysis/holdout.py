"""Held-out extrapolation: fit on all but the largest-compute runs and score the forecast of those,
because a scaling law is only as good as its forecasts."""

from __future__ import annotations

from typing import Callable

import numpy as np

from analysis.errors import FitError
from analysis.result import FitResult


def holdout_forecast(compute: np.ndarray, observed: np.ndarray, held_out: int,
                     fit: Callable[[np.ndarray], FitResult],
                     predict: Callable[[FitResult, np.ndarray], np.ndarray]) -> dict:
    """Fit on rows outside the `held_out` largest `compute`, predict those rows, report the errors.

    `fit(train_rows)` returns a FitResult; `predict(result, test_rows)` the forecast for those rows.
    """
    if held_out < 1:
        raise FitError(f"holdout: need at least 1 held-out run, not {held_out}")
    if held_out >= len(compute):
        raise FitError(f"holdout: {held_out} held-out run(s) leave nothing to fit of {len(compute)}")
    order = np.argsort(compute, kind="stable")
    train, test = np.sort(order[:-held_out]), np.sort(order[-held_out:])
    result = fit(train)
    forecast = np.asarray(predict(result, test), float)
    error = forecast - observed[test]
    relative = error / np.abs(observed[test])
    return {"held_out": int(held_out), "train_points": int(train.size),
            "max_train_compute": float(compute[train].max()),
            "rows": test.tolist(), "compute": compute[test].tolist(),
            "observed": observed[test].tolist(), "predicted": forecast.tolist(),
            "relative_error": relative.tolist(),
            "mean_abs_relative_error": float(np.mean(np.abs(relative))),
            "max_abs_relative_error": float(np.max(np.abs(relative))),
            "train_params": result.params}
