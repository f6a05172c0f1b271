"""L-BFGS run on a batch of independent problems at once, vectorised over the batch with numpy.

Each batch member is its own minimisation (its own history, step and stopping); only the
objective evaluations are batched, so one call per iteration serves every member still running.
The stopping rules are scipy's L-BFGS-B defaults (Byrd, Lu, Nocedal & Zhu 1995; scipy
`_minimize_lbfgsb`): stop when max|g| <= gtol, or when the decrease
(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol, or after maxiter iterations. These rules are
not scale-free, which is what makes a mean-reduced objective stop early (see chinchilla.py).
The line search is backtracking to the Armijo condition; a pair (s, y) with too little
curvature is not stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# (x of the running members, their indices into the batch) -> (objective, gradient)
BatchObjective = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

SCIPY_FTOL = 1e7 * np.finfo(float).eps  # factr = 1e7 times machine epsilon
SCIPY_GTOL = 1e-5


@dataclass(frozen=True)
class BatchResult:
    x: np.ndarray           # (S, k) final points
    fun: np.ndarray         # (S,) final objective values
    iterations: np.ndarray  # (S,) iterations taken per member
    converged: np.ndarray   # (S,) stopped by gtol/ftol rather than by maxiter or a failed line search


def minimize_batch(objective: BatchObjective, x0: np.ndarray, *, maxiter: int = 15000, memory: int = 10,
                   ftol: float = SCIPY_FTOL, gtol: float = SCIPY_GTOL, armijo: float = 1e-4,
                   max_backtracks: int = 40) -> BatchResult:
    """Minimise S independent problems from the rows of `x0` (S, k)."""
    x = np.array(x0, dtype=float, copy=True)
    size, dims = x.shape
    everyone = np.arange(size)
    fun, grad = objective(x, everyone)
    grad = np.array(grad, dtype=float)
    fun = np.array(fun, dtype=float)
    history_s = np.zeros((size, memory, dims))
    history_y = np.zeros((size, memory, dims))
    history_rho = np.zeros((size, memory))  # 0 marks an empty or rejected slot: it then has no effect
    iterations = np.zeros(size, dtype=int)
    converged = np.max(np.abs(grad), axis=1) <= gtol
    running = ~converged & np.isfinite(fun)

    for step in range(maxiter):
        active = np.flatnonzero(running)
        if active.size == 0:
            break
        g = grad[active]
        direction = -_two_loop(g, history_s[active], history_y[active], history_rho[active], step, memory)
        slope = np.einsum("ij,ij->i", g, direction)
        uphill = ~(slope < 0)
        if uphill.any():  # lost descent: restart that member's memory from steepest descent
            direction[uphill] = -g[uphill]
            slope[uphill] = -np.einsum("ij,ij->i", g[uphill], g[uphill])
            history_rho[active[uphill]] = 0.0
        first = history_rho[active].any(axis=1) == 0
        steps = np.where(first, np.minimum(1.0, 1.0 / np.linalg.norm(g, axis=1)), 1.0)

        new_x, new_fun, new_grad, found = _backtrack(objective, x[active], fun[active], direction, slope,
                                                     steps, active, armijo, max_backtracks)
        iterations[active] += 1
        failed = active[~found]
        running[failed] = False  # no acceptable step: stop where it is (scipy: ABNORMAL_TERMINATION)

        moved = active[found]
        s = new_x[found] - x[moved]
        y = new_grad[found] - grad[moved]
        sy = np.einsum("ij,ij->i", s, y)
        yy = np.einsum("ij,ij->i", y, y)
        slot = step % memory
        history_s[moved, slot] = s
        history_y[moved, slot] = y
        history_rho[moved, slot] = np.where(sy > np.finfo(float).eps * yy, 1.0 / np.where(sy > 0, sy, 1.0), 0.0)

        old_fun = fun[moved]
        x[moved], fun[moved], grad[moved] = new_x[found], new_fun[found], new_grad[found]
        relative_decrease = (old_fun - fun[moved]) / np.maximum.reduce([np.abs(old_fun), np.abs(fun[moved]),
                                                                         np.ones_like(old_fun)])
        done = (relative_decrease <= ftol) | (np.max(np.abs(grad[moved]), axis=1) <= gtol)
        converged[moved[done]] = True
        running[moved[done]] = False
    return BatchResult(x=x, fun=fun, iterations=iterations, converged=converged)


def _two_loop(g: np.ndarray, s: np.ndarray, y: np.ndarray, rho: np.ndarray, step: int, memory: int) -> np.ndarray:
    """H g by the L-BFGS two-loop recursion (Nocedal & Wright 2006, Algorithm 7.4), per batch row."""
    q = g.copy()
    newest_first = [(step - 1 - i) % memory for i in range(memory)]
    alphas = {}
    for slot in newest_first:
        alphas[slot] = rho[:, slot] * np.einsum("ij,ij->i", s[:, slot], q)
        q -= alphas[slot][:, None] * y[:, slot]
    gamma = np.ones(len(g))
    for slot in reversed(newest_first):  # the newest stored pair sets the initial scaling
        valid = rho[:, slot] > 0
        yy = np.einsum("ij,ij->i", y[:, slot], y[:, slot])
        gamma = np.where(valid, 1.0 / np.where(valid, rho[:, slot] * yy, 1.0), gamma)
    r = gamma[:, None] * q
    for slot in reversed(newest_first):
        beta = rho[:, slot] * np.einsum("ij,ij->i", y[:, slot], r)
        r += (alphas[slot] - beta)[:, None] * s[:, slot]
    return r


def _backtrack(objective: BatchObjective, x: np.ndarray, fun: np.ndarray, direction: np.ndarray,
               slope: np.ndarray, steps: np.ndarray, members: np.ndarray, armijo: float,
               max_backtracks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Halve each member's step until f(x + t d) <= f(x) + c t g.d; re-evaluate only those still failing."""
    new_x = np.empty_like(x)
    new_fun = np.full(len(x), np.inf)
    new_grad = np.empty_like(x)
    found = np.zeros(len(x), dtype=bool)
    trying = np.arange(len(x))
    t = steps.copy()
    for _ in range(max_backtracks):
        candidate = x[trying] + t[trying, None] * direction[trying]
        with np.errstate(over="ignore", invalid="ignore"):
            f, g = objective(candidate, members[trying])
        ok = np.isfinite(f) & (f <= fun[trying] + armijo * t[trying] * slope[trying]) & np.isfinite(g).all(axis=1)
        accepted = trying[ok]
        new_x[accepted], new_fun[accepted], new_grad[accepted] = candidate[ok], f[ok], g[ok]
        found[accepted] = True
        trying = trying[~ok]
        if trying.size == 0:
            break
        t[trying] *= 0.5
    return new_x, new_fun, new_grad, found
