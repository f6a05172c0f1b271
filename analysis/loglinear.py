"""The HSTU paper's log-linear metric law y = a + b ln C (Zhai et al. 2024, "Actions Speak Louder
than Words", fig. 7), fitted by ordinary least squares."""

from __future__ import annotations

import numpy as np

from analysis import bootstrap as boot
from analysis.checks import as_finite, as_positive, require_points, require_spread, same_length
from analysis.errors import FitError
from analysis.result import FitResult, goodness_of_fit

PARAMS = ["a", "b"]
MIN_POINTS = 3


def predict(params: dict[str, float], x: np.ndarray) -> np.ndarray:
    return params["a"] + params["b"] * np.log(np.asarray(x, float))


def _fit_arrays(log_x: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], float]:
    if np.ptp(log_x) == 0:
        raise FitError("loglinear: all x are equal")
    b, a = np.polyfit(log_x, y, 1)
    residual = y - (a + b * log_x)
    return {"a": float(a), "b": float(b)}, float(np.sum(residual ** 2))


def fit_loglinear(x: object, y: object, *, bootstrap: int = 100, seed: int = 0, ci_level: float = 0.95,
                  x_name: str = "x", y_name: str = "y") -> FitResult:
    """Fit y = a + b ln x; bootstrap CIs over points."""
    x = as_positive(x, x_name)
    y = as_finite(y, y_name)
    count = same_length(**{x_name: x, y_name: y})
    require_points(count, MIN_POINTS, "loglinear")
    require_spread(x, x_name)
    log_x = np.log(x)
    params, objective = _fit_arrays(log_x, y)
    result = FitResult(form="loglinear", params=params, n_points=count, objective=objective,
                       goodness=goodness_of_fit(y, predict(params, x)), ci_level=ci_level,
                       extra={"objective_kind": "sum of squared residuals"})
    if bootstrap <= 0:
        return result
    samples, failed = boot.refit_each(lambda rows: _fit_arrays(log_x[rows], y[rows])[0],
                                      boot.resample_indices(count, bootstrap, seed), PARAMS)
    return boot.attach(result, samples, bootstrap, failed, ci_level)
