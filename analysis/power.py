"""Saturating power law y = E + A x^(-alpha) (falling, loss-like) and its rising mirror y = E - A x^(-alpha)
(metrics such as HR@K that climb towards a ceiling E).

Least squares on relative residuals (y_hat - y) / y, close to log-space residuals but defined even
while the rising form's prediction crosses zero. For a fixed alpha the model is linear in (E, A), so
(E, A) >= 0 come from non-negative least squares and only alpha is searched, on a log grid refined
by a bounded scalar minimisation (variable projection, Golub & Pereyra 1973): no starting point to
get wrong.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar, nnls

from analysis import bootstrap as boot
from analysis.checks import as_positive, require_points, require_spread, same_length
from analysis.errors import FitError
from analysis.result import FitResult, goodness_of_fit

PARAMS = ["E", "A", "alpha"]
MIN_POINTS = 4
ALPHA_BOUNDS = (1e-4, 5.0)
ALPHA_GRID = np.geomspace(*ALPHA_BOUNDS, 160)
DIRECTIONS = ("falling", "rising")


def predict(params: dict[str, float], x: np.ndarray, direction: str = "falling") -> np.ndarray:
    sign = 1.0 if direction == "falling" else -1.0
    return params["E"] + sign * params["A"] * np.asarray(x, float) ** (-params["alpha"])


def infer_direction(x: np.ndarray, y: np.ndarray) -> str:
    """'rising' when y grows with ln x (least-squares slope > 0), else 'falling'."""
    slope = np.polyfit(np.log(x), y, 1)[0] if np.unique(x).size > 1 else 0.0
    return "rising" if slope > 0 else "falling"


def _profile(z: np.ndarray, y: np.ndarray, sign: float) -> Callable[[float], tuple[float, np.ndarray]]:
    """alpha -> (objective, (E, A_scaled)) with (E, A) solved by NNLS on relative residuals."""
    inverse_y = 1.0 / y

    def solve(alpha: float) -> tuple[float, np.ndarray]:
        design = np.column_stack([inverse_y, sign * z ** (-alpha) * inverse_y])
        coefficients, norm = nnls(design, np.ones_like(y))
        return float(norm ** 2), coefficients

    return solve


def _fit_arrays(x: np.ndarray, y: np.ndarray, direction: str, alpha_hint: float | None = None) -> tuple[dict[str, float], float]:
    sign = 1.0 if direction == "falling" else -1.0
    scale = float(np.exp(np.mean(np.log(x))))  # x / geometric mean keeps x^-alpha near 1 for conditioning
    solve = _profile(x / scale, y, sign)
    candidates = ALPHA_GRID if alpha_hint is None else np.append(ALPHA_GRID, alpha_hint)
    objectives = np.array([solve(alpha)[0] for alpha in candidates])
    order = np.argsort(candidates)
    candidates, objectives = candidates[order], objectives[order]
    best = int(np.argmin(objectives))
    low = candidates[max(best - 1, 0)]
    high = candidates[min(best + 1, len(candidates) - 1)]
    alpha = float(candidates[best])
    if high > low:
        refined = minimize_scalar(lambda a: solve(a)[0], bounds=(low, high), method="bounded",
                                  options={"xatol": 1e-10 * max(alpha, 1e-3)})
        if refined.fun <= objectives[best]:
            alpha = float(refined.x)
    objective, (E, A_scaled) = solve(alpha)
    if A_scaled <= 0:
        raise FitError(f"power ({direction}): no {direction} trend in the data (best amplitude A is 0)")
    return {"E": float(E), "A": float(A_scaled * scale ** alpha), "alpha": alpha}, objective


def fit_power(x: object, y: object, *, direction: str = "auto", bootstrap: int = 100, seed: int = 0,
              ci_level: float = 0.95, x_name: str = "x", y_name: str = "y") -> FitResult:
    """Fit y = E +/- A x^-alpha; `direction` 'falling', 'rising' or 'auto' (from the sign of the trend)."""
    x = as_positive(x, x_name)
    y = as_positive(y, y_name)
    count = same_length(**{x_name: x, y_name: y})
    require_points(count, MIN_POINTS, "power")
    require_spread(x, x_name, 3)
    if direction == "auto":
        direction = infer_direction(x, y)
    if direction not in DIRECTIONS:
        raise FitError(f"power: direction must be one of {DIRECTIONS + ('auto',)}, not {direction!r}")
    params, objective = _fit_arrays(x, y, direction)
    result = FitResult(form="power", params=params, n_points=count, objective=objective,
                       goodness=goodness_of_fit(y, predict(params, x, direction)), ci_level=ci_level,
                       extra={"direction": direction, "objective_kind": "sum of squared relative residuals"})
    if bootstrap <= 0:
        return result

    def refit(rows: np.ndarray) -> dict[str, float]:
        if np.unique(x[rows]).size < 3:
            raise FitError("resample has fewer than 3 distinct x")
        return _fit_arrays(x[rows], y[rows], direction, alpha_hint=params["alpha"])[0]

    samples, failed = boot.refit_each(refit, boot.resample_indices(count, bootstrap, seed), PARAMS)
    return boot.attach(result, samples, bootstrap, failed, ci_level)
