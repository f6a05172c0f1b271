"""N_opt(C) by two routes of Hoffmann et al. (2022), compared: the IsoFLOP minima (their approach 2)
and the joint law's compute-optimal allocation (approach 3). Both give N_opt proportional to C^a;
agreement is each budget's N* against the joint law's N_opt(C) and the two exponents' intervals."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis import chinchilla, isoflop
from analysis.result import FitResult


def _overlap(first: tuple[float, float] | None, second: tuple[float, float] | None) -> bool | None:
    if first is None or second is None:
        return None
    return bool(first[0] <= second[1] and second[0] <= first[1])


def _inside(value: float, interval: tuple[float, float] | None) -> bool | None:
    return None if interval is None else bool(interval[0] <= value <= interval[1])


def compare(isoflop_fit: FitResult, joint_fit: FitResult) -> dict[str, Any]:
    """Per IsoFLOP budget: its N*, the joint law's N_opt at that compute and their ratio; the two
    exponents a (N_opt ~ C^a) with their intervals, whether the intervals overlap and whether each
    estimate lies inside the other's interval (None where an interval is missing)."""
    minima = isoflop.budget_minima(isoflop_fit)
    compute = np.array([m.compute for m in minima], float)
    joint_n, _ = chinchilla.compute_optimal(joint_fit.params, compute)
    budgets = [{"compute": float(c), "isoflop_n_opt": float(m.n_opt), "joint_n_opt": float(n),
                "ratio": float(m.n_opt / n)} for c, m, n in zip(compute, minima, joint_n)]
    a_iso, a_joint = isoflop_fit.params["a_opt"], joint_fit.params["a_opt"]
    ci_iso, ci_joint = isoflop_fit.ci.get("a_opt"), joint_fit.ci.get("a_opt")
    ratios = np.array([b["ratio"] for b in budgets])
    return {"budgets": budgets,
            "max_abs_log_ratio": float(np.max(np.abs(np.log(ratios)))) if ratios.size else None,
            "a_opt_isoflop": float(a_iso), "a_opt_isoflop_ci": list(ci_iso) if ci_iso else None,
            "a_opt_joint": float(a_joint), "a_opt_joint_ci": list(ci_joint) if ci_joint else None,
            "intervals_overlap": _overlap(ci_iso, ci_joint),
            "isoflop_inside_joint_interval": _inside(a_iso, ci_joint),
            "joint_inside_isoflop_interval": _inside(a_joint, ci_iso)}
