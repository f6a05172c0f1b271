"""What every fit returns: parameters, bootstrap intervals and goodness of fit, and its JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FitResult:
    form: str
    params: dict[str, float]
    n_points: int
    objective: float                      # the minimised objective at `params`
    goodness: dict[str, float]            # r2, rmse, rmse_log: whichever apply to the form
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    se: dict[str, float] = field(default_factory=dict)  # bootstrap standard deviations
    samples: np.ndarray | None = None     # (resamples, len(params)) bootstrap estimates, columns in params order
    ci_level: float = 0.95
    bootstrap: int = 0                    # resamples requested
    bootstrap_failed: int = 0             # resamples whose refit was impossible (degenerate draw)
    extra: dict[str, Any] = field(default_factory=dict)

    def sample_table(self) -> dict[str, np.ndarray]:
        """Bootstrap estimates per parameter name (empty without a bootstrap)."""
        if self.samples is None or len(self.samples) == 0:
            return {}
        return {name: self.samples[:, i] for i, name in enumerate(self.params)}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"form": self.form, **{k: _plain(v) for k, v in self.params.items()}}
        out["ci"] = {k: [_plain(lo), _plain(hi)] for k, (lo, hi) in self.ci.items()}
        out["se"] = {k: _plain(v) for k, v in self.se.items()}
        out["ci_level"] = self.ci_level
        out["n_points"] = self.n_points
        out["objective"] = _plain(self.objective)
        out.update({k: _plain(v) for k, v in self.goodness.items()})
        out["bootstrap"] = self.bootstrap
        out["bootstrap_failed"] = self.bootstrap_failed
        out.update({k: _plain(v) for k, v in self.extra.items()})
        return out


def goodness_of_fit(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """R^2 and RMSE of `predicted` against `observed`, and RMSE of their logarithms when both are > 0."""
    residual = observed - predicted
    total = np.sum((observed - observed.mean()) ** 2)
    out = {"r2": float(1.0 - np.sum(residual ** 2) / total) if total > 0 else float("nan"),
           "rmse": float(np.sqrt(np.mean(residual ** 2)))}
    if np.all(observed > 0) and np.all(predicted > 0):
        out["rmse_log"] = float(np.sqrt(np.mean((np.log(observed) - np.log(predicted)) ** 2)))
    return out


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value
