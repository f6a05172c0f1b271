"""IsoFLOP analysis, Chinchilla's approach 2 (Hoffmann et al. 2022, section 3.2).

Runs are grouped into compute budgets; per budget the final loss is fitted by a parabola in ln N
and its vertex gives the loss-optimal size N*(C). A power law N_opt = k_N C^a_opt through the
vertices (least squares in log-log) gives the allocation; D_opt = C / (6 N_opt) = k_D C^b_opt with
b_opt = 1 - a_opt and k_D = 1 / (6 k_N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis import bootstrap as boot
from analysis.checks import as_positive, require_points, same_length
from analysis.errors import FitError
from analysis.result import FitResult

PARAMS = ["a_opt", "b_opt", "k_N", "k_D"]
MIN_RUNS_PER_BUDGET = 3
MIN_BUDGETS = 2
BUDGET_TOLERANCE_DECADES = 0.1


@dataclass(frozen=True)
class BudgetMinimum:
    compute: float          # geometric mean of the budget's training compute, FLOP
    n_opt: float            # vertex of the parabola, parameters
    loss_opt: float         # parabola at its vertex
    curvature: float        # d^2 L / d(ln N)^2 / 2
    coefficients: tuple[float, float, float]  # parabola in ln N, highest power first (np.polyval order)
    interior: bool          # vertex inside the budget's sampled range of N
    runs: int


def group_budgets(compute: np.ndarray, tolerance_decades: float = BUDGET_TOLERANCE_DECADES) -> np.ndarray:
    """Budget labels: in order of compute, a run joins the current budget while it lies within
    `tolerance_decades` of that budget's smallest run (anchored, so a dense spread of compute is not
    chained into one budget)."""
    log_c = np.log10(compute)
    order = np.argsort(log_c, kind="stable")
    labels = np.empty(len(compute), dtype=int)
    label, anchor = -1, -np.inf
    for i in order:
        if log_c[i] - anchor > tolerance_decades:
            label, anchor = label + 1, log_c[i]
        labels[i] = label
    return labels


def group_budgets_within(compute: np.ndarray, groups: np.ndarray,
                         tolerance_decades: float = BUDGET_TOLERANCE_DECADES) -> np.ndarray:
    """group_budgets inside each value of `groups` (e.g. the history length: runs of one compute
    but different sequence lengths lie on different IsoFLOP profiles); labels distinct across groups."""
    labels = np.empty(len(compute), dtype=int)
    offset = 0
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        inner = group_budgets(compute[rows], tolerance_decades)
        labels[rows] = inner + offset
        offset += inner.max() + 1
    return labels


def budget_minimum(n: np.ndarray, loss: np.ndarray, compute: np.ndarray) -> BudgetMinimum:
    """Vertex of the parabola of loss in ln N for one budget; FitError if it has no minimum."""
    log_n = np.log(n)
    if np.unique(log_n).size < MIN_RUNS_PER_BUDGET:
        raise FitError(f"budget C~{np.exp(np.mean(np.log(compute))):.3g}: needs {MIN_RUNS_PER_BUDGET} distinct sizes")
    p2, p1, p0 = np.polyfit(log_n, loss, 2)
    # curvature that bends the parabola by under 1e-6 of the loss spread over the sampled sizes is roundoff
    if not p2 * np.ptp(log_n) ** 2 > 1e-6 * max(np.ptp(loss), np.finfo(float).tiny):
        raise FitError(f"budget C~{np.exp(np.mean(np.log(compute))):.3g}: loss is not convex in ln N (no minimum)")
    vertex = -p1 / (2 * p2)
    return BudgetMinimum(compute=float(np.exp(np.mean(np.log(compute)))), n_opt=float(np.exp(vertex)),
                         loss_opt=float(np.polyval([p2, p1, p0], vertex)), curvature=float(p2),
                         coefficients=(float(p2), float(p1), float(p0)),
                         interior=bool(log_n.min() <= vertex <= log_n.max()), runs=int(len(n)))


def _minima(n: np.ndarray, loss: np.ndarray, compute: np.ndarray, labels: np.ndarray) -> tuple[list[BudgetMinimum], list[str]]:
    minima, skipped = [], []
    for label in np.unique(labels):
        rows = labels == label
        try:
            minima.append(budget_minimum(n[rows], loss[rows], compute[rows]))
        except FitError as error:
            skipped.append(str(error))
    return minima, skipped


def _allocation(minima: list[BudgetMinimum]) -> tuple[dict[str, float], float]:
    if len(minima) < MIN_BUDGETS:
        raise FitError(f"isoflop: {len(minima)} budget(s) with a loss minimum, the fit needs at least {MIN_BUDGETS}")
    log_c = np.log([m.compute for m in minima])
    log_n = np.log([m.n_opt for m in minima])
    if np.ptp(log_c) == 0:
        raise FitError("isoflop: all budgets have the same compute")
    a_opt, log_k = np.polyfit(log_c, log_n, 1)
    objective = float(np.sum((log_n - (log_k + a_opt * log_c)) ** 2))
    k_n = float(np.exp(log_k))
    return {"a_opt": float(a_opt), "b_opt": float(1 - a_opt), "k_N": k_n, "k_D": 1.0 / (6.0 * k_n)}, objective


def predict_n_opt(params: dict[str, float], compute: np.ndarray) -> np.ndarray:
    return params["k_N"] * np.asarray(compute, float) ** params["a_opt"]


def fit_isoflop(n: object, loss: object, compute: object, *, budgets: object | None = None,
                tolerance_decades: float = BUDGET_TOLERANCE_DECADES, bootstrap: int = 100, seed: int = 0,
                ci_level: float = 0.95) -> FitResult:
    """Approach-2 allocation from runs (N parameters, final loss, training compute C in FLOP).

    `budgets` labels runs by budget; by default runs within `tolerance_decades` of compute are grouped.
    Bootstrap resamples runs within each budget.
    """
    n = as_positive(n, "N (parameters)")
    loss = as_positive(loss, "loss")
    compute = as_positive(compute, "C (compute)")
    count = same_length(N=n, loss=loss, C=compute)
    require_points(count, MIN_BUDGETS * MIN_RUNS_PER_BUDGET, "isoflop")
    labels = group_budgets(compute, tolerance_decades) if budgets is None else np.unique(np.asarray(budgets), return_inverse=True)[1]
    minima, skipped = _minima(n, loss, compute, labels)
    params, objective = _allocation(minima)
    log_n_opt = np.log([m.n_opt for m in minima])
    fitted = np.log(predict_n_opt(params, np.array([m.compute for m in minima])))
    total = np.sum((log_n_opt - log_n_opt.mean()) ** 2)
    goodness = {"r2_log": float(1 - objective / total) if total > 0 else float("nan"),
                "rmse_log": float(np.sqrt(np.mean((log_n_opt - fitted) ** 2)))}
    result = FitResult(form="isoflop", params=params, n_points=count, objective=objective, goodness=goodness,
                       ci_level=ci_level,
                       extra={"budgets": [m.__dict__ for m in minima], "skipped_budgets": skipped,
                              "objective_kind": "sum of squared log residuals of N* against the power law"})
    if bootstrap <= 0:
        return result

    def refit(rows: np.ndarray) -> dict[str, float]:
        return _allocation(_minima(n[rows], loss[rows], compute[rows], labels[rows])[0])[0]

    samples, failed = boot.refit_each(refit, boot.resample_indices(count, bootstrap, seed, strata=labels), PARAMS)
    return boot.attach(result, samples, bootstrap, failed, ci_level)


def budget_minima(result: FitResult) -> list[BudgetMinimum]:
    """The per-budget minima of a fit, as objects."""
    return [BudgetMinimum(**m) for m in result.extra["budgets"]]
