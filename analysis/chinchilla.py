"""Chinchilla's joint law L(N, D) = E + A / N^alpha + B / D^beta and the compute-optimal allocation.

Fitted as Hoffmann et al. 2022 (appendix D.2) and Besiroglu et al. 2024 ("Chinchilla Scaling: A
replication attempt") describe: log-sum-exp parametrisation A = e^a, B = e^b, E = e^e, objective
sum_i Huber_delta(LSE(a - alpha ln N_i, b - beta ln D_i, e) - ln L_i) with delta = 1e-3, L-BFGS from
every point of a grid of starts, the best kept. The Huber terms are SUMMED: averaging them shrinks
the objective and gradient by 1/n, so L-BFGS's absolute tolerances stop it after a few iterations
near the start (the replication traced the original paper's estimates to that).
All grid starts run as one batch (analysis.lbfgs) with scipy's default tolerances, as in the
published procedure; the best start is then polished with tight tolerances (REFIT_TOLERANCES).
Bootstrap resamples are one batch too, each a vector of row counts (weights) refitted from the
full-data optimum with the tight tolerances: under scipy's absolute ftol a refit started at an
optimum stops after one tiny step, and the intervals would collapse to zero width.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np

from analysis import bootstrap as boot
from analysis.checks import as_positive, require_points, require_spread, same_length
from analysis.errors import FitError
from analysis.lbfgs import minimize_batch
from analysis.result import FitResult, goodness_of_fit

HUBER_DELTA = 1e-3
PARAMS = ["E", "A", "B", "alpha", "beta", "a_opt", "b_opt", "G"]
MIN_POINTS = 6  # five free parameters and at least one residual degree of freedom
REFIT_TOLERANCES = {"ftol": 0.0, "gtol": 1e-10}


def hoffmann_start_grid() -> np.ndarray:
    """(4500, 5) starts in (a, b, e, alpha, beta): alpha, beta in {0,.5,..,2}, e in {-1,-.5,..,1}, a, b in {0,5,..,25}."""
    alphas = np.arange(0.0, 2.01, 0.5)
    es = np.arange(-1.0, 1.01, 0.5)
    logs = np.arange(0.0, 25.01, 5.0)
    return np.array([(a, b, e, alpha, beta)
                     for alpha, beta, e, a, b in itertools.product(alphas, alphas, es, logs, logs)])


def huber(residual: np.ndarray, delta: float) -> np.ndarray:
    magnitude = np.abs(residual)
    return np.where(magnitude <= delta, 0.5 * residual ** 2, delta * (magnitude - 0.5 * delta))


def log_predicted_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """ln L for rows theta = (a, b, e, alpha, beta) of shape (S, 5) -> (S, n)."""
    a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
    terms = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e))
    top = terms.max(axis=0)
    return top + np.log(np.exp(terms - top).sum(axis=0))


def batch_objective(log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray, weights: np.ndarray,
                    delta: float = HUBER_DELTA, reduction: str = "sum") -> Callable:
    """Huber objective and its analytic gradient for a batch; `weights` (S, n) are per-member row counts."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', not {reduction!r}")
    scale = 1.0 if reduction == "sum" else 1.0 / len(log_loss)

    def value_and_grad(theta: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
        terms = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e))
        top = terms.max(axis=0)
        exps = np.exp(terms - top)
        total = exps.sum(axis=0)
        residual = top + np.log(total) - log_loss
        w = weights[members] * scale
        value = np.sum(w * huber(residual, delta), axis=1)
        # d Huber / d residual = clip(residual), d LSE / d term_k = softmax_k
        pull = w * np.clip(residual, -delta, delta) / total
        d_n, d_d, d_e = pull * exps[0], pull * exps[1], pull * exps[2]
        gradient = np.stack([d_n.sum(1), d_d.sum(1), d_e.sum(1),
                             -(d_n * log_n).sum(1), -(d_d * log_d).sum(1)], axis=1)
        return value, gradient

    return value_and_grad


def from_theta(theta: np.ndarray) -> dict[str, float]:
    """Named parameters, with the compute-optimal allocation, from (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = (float(v) for v in theta)
    A, B, E = np.exp(a), np.exp(b), np.exp(e)
    out = {"E": E, "A": A, "B": B, "alpha": alpha, "beta": beta}
    out.update(allocation(alpha, beta, A, B))
    return {k: float(v) for k, v in out.items()}


def allocation(alpha: float, beta: float, A: float, B: float) -> dict[str, float]:
    """Minimising L(N, D) under C = 6 N D gives N_opt = G (C/6)^a_opt, D_opt = (C/6)^b_opt / G
    (Hoffmann et al. 2022, eq. 4)."""
    total = alpha + beta
    if not total > 0 or not A > 0 or not B > 0 or not beta > 0:
        return {"a_opt": float("nan"), "b_opt": float("nan"), "G": float("nan")}
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        G = (alpha * A / (beta * B)) ** (1.0 / total)
    return {"a_opt": beta / total, "b_opt": alpha / total, "G": float(G)}


def predict_loss(params: dict[str, float], n: np.ndarray, d: np.ndarray) -> np.ndarray:
    return params["E"] + params["A"] / np.asarray(n, float) ** params["alpha"] + params["B"] / np.asarray(d, float) ** params["beta"]


def compute_optimal(params: dict[str, float], compute: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) at training compute `compute` in FLOP."""
    base = np.asarray(compute, float) / 6.0
    return params["G"] * base ** params["a_opt"], base ** params["b_opt"] / params["G"]


def fit_chinchilla(n: object, d: object, loss: object, *, delta: float = HUBER_DELTA, reduction: str = "sum",
                   starts: np.ndarray | None = None, polish: bool = True, bootstrap: int = 100, seed: int = 0,
                   ci_level: float = 0.95, progress: Callable[[str], None] | None = None) -> FitResult:
    """Fit L(N, D) to runs with N parameters, D tokens and final loss; bootstrap CIs over runs."""
    n = as_positive(n, "N (parameters)")
    d = as_positive(d, "D (tokens)")
    loss = as_positive(loss, "loss")
    count = same_length(N=n, D=d, loss=loss)
    require_points(count, MIN_POINTS, "chinchilla")
    require_spread(n, "N (parameters)")
    require_spread(d, "D (tokens)")
    log_n, log_d, log_loss = np.log(n), np.log(d), np.log(loss)
    starts = hoffmann_start_grid() if starts is None else np.atleast_2d(np.asarray(starts, float))
    say = progress or (lambda message: None)

    say(f"chinchilla: L-BFGS from {len(starts)} starts on {count} points ...")
    ones = np.ones((1, count))
    objective = batch_objective(log_n, log_d, log_loss, np.broadcast_to(ones, (len(starts), count)), delta, reduction)
    runs = minimize_batch(objective, starts)
    usable = np.isfinite(runs.fun)
    if not usable.any():
        raise FitError("chinchilla: no start reached a finite objective")
    best = int(np.argmin(np.where(usable, runs.fun, np.inf)))
    theta, objective_value = runs.x[best], float(runs.fun[best])
    if polish:
        polished = minimize_batch(objective, theta[None], **REFIT_TOLERANCES)
        if polished.fun[0] <= objective_value:
            theta, objective_value = polished.x[0], float(polished.fun[0])
    params = from_theta(theta)
    predicted = np.exp(log_predicted_loss(theta[None], log_n, log_d)[0])
    goodness = goodness_of_fit(loss, predicted)
    goodness["r2_log"] = goodness_of_fit(log_loss, np.log(predicted))["r2"]
    result = FitResult(form="chinchilla", params=params, n_points=count, objective=objective_value,
                       goodness=goodness, ci_level=ci_level,
                       extra={"huber_delta": delta, "reduction": reduction, "starts": len(starts),
                              "starts_converged": int(runs.converged.sum()),
                              "iterations_best": int(runs.iterations[best]),
                              "grid_objective": float(runs.fun[best]), "polished": polish,
                              "log_params": dict(zip(["a", "b", "e", "alpha", "beta"], map(float, theta)))})
    if bootstrap <= 0:
        return result

    say(f"chinchilla: {bootstrap} bootstrap refits from the full-data optimum ...")
    draws = boot.resample_indices(count, bootstrap, seed)
    counts = np.stack([np.bincount(row, minlength=count) for row in draws]).astype(float)
    resampled = minimize_batch(batch_objective(log_n, log_d, log_loss, counts, delta, reduction),
                               np.repeat(theta[None], bootstrap, axis=0), **REFIT_TOLERANCES)
    ok = np.isfinite(resampled.fun)
    samples = np.array([[from_theta(row)[name] for name in PARAMS] for row in resampled.x[ok]]).reshape(-1, len(PARAMS))
    return boot.attach(result, samples, bootstrap, int((~ok).sum()), ci_level)
