"""The irreducible loss a synthetic source reports beside its runs (data/floors.py), for the report.

Runs on a synthetic source carry, per evaluated split, the floor of the events their loss is
measured on: `floor_bayes` (what a sequence model can reach: θ_u inferred from the history it sees)
and `floor_oracle` (a predictor that knows θ_u) for eval_loss, `test_floor_*` for test_loss. A law
fitted to a loss column is compared with the floor of that column's events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# The loss column -> the prefix of its floor columns; other losses (training loss) have none.
FLOOR_PREFIX = {"eval_loss": "", "test_loss": "test_"}


@dataclass(frozen=True)
class Floor:
    """The floor a law's E is compared with: the reachable (Bayes) floor where the generator gives
    one, else the oracle's; `highest` differs from `value` when the runs' floors differ (e.g. by
    history length), and the law is then compared with the lowest of them."""

    value: float
    stderr: float
    kind: str  # "Bayes" or "oracle"
    oracle: float
    highest: float

    @property
    def label(self) -> str:
        spread = f", runs up to {self.highest:.4g}" if self.highest - self.value > max(self.stderr, 1e-9) else ""
        return f"irreducible loss (generator, {self.kind}): {self.value:.4g}{spread}"

    def covered_by(self, interval: tuple[float, float] | None) -> bool | None:
        """Whether the interval holds the floor (within 2 standard errors of the floor's own
        sampling); None without an interval."""
        if interval is None:
            return None
        return bool(interval[0] - 2 * self.stderr <= self.value <= interval[1] + 2 * self.stderr)

    def not_above(self, interval: tuple[float, float] | None) -> bool | None:
        """Whether the floor is at or below the interval's top (an E whose whole interval lies below
        the reachable floor is a defect: no model can beat it); None without an interval."""
        if interval is None:
            return None
        return bool(self.value <= interval[1] + 2 * self.stderr)

    def to_json(self) -> dict:
        return {"value": self.value, "stderr": self.stderr, "kind": self.kind, "oracle": self.oracle,
                "highest": self.highest}


def floor_for(table: pd.DataFrame, loss_column: str) -> Floor | None:
    """The floor of `loss_column`'s events over the runs of `table`, or None when they have none."""
    prefix = FLOOR_PREFIX.get(loss_column)
    if prefix is None:
        return None
    for kind in ("bayes", "oracle"):
        column = f"{prefix}floor_{kind}"
        if column not in table.columns:
            continue
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
        if not np.isfinite(values).any():
            continue
        lowest = int(np.nanargmin(values))
        stderr = _column(table, f"{column}_stderr")[lowest]
        oracle = _column(table, f"{prefix}floor_oracle")
        return Floor(value=float(values[lowest]), stderr=float(np.nan_to_num(stderr)),
                     kind="Bayes" if kind == "bayes" else "oracle",
                     oracle=float(np.nanmin(oracle)) if np.isfinite(oracle).any() else float("nan"),
                     highest=float(np.nanmax(values)))
    return None


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(float)
