"""Fit a named form to a table of runs: pick columns, derive D or C, drop outliers, add a held-out forecast.

This is the one place that knows how table columns map onto each fit's arguments; the CLI and the
report both call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from analysis import chinchilla, frontier, holdout, isoflop, loglinear, power, records
from analysis.checks import as_positive
from analysis.errors import FitError
from analysis.result import FitResult

FORMS = ("power", "loglinear", "chinchilla", "isoflop", "frontier")


@dataclass(frozen=True)
class Columns:
    """Column choices; None means the first of records.*_COLUMNS present in the table."""
    x: str | None = None
    y: str | None = None
    n: str | None = None
    d: str | None = None
    c: str | None = None
    loss: str | None = None
    budget: str | None = None         # isoflop: a column labelling each run's compute budget


@dataclass(frozen=True)
class FitOptions:
    bootstrap: int = 100
    seed: int = 0
    ci_level: float = 0.95
    direction: str = "auto"           # power law only
    budget_tolerance: float = isoflop.BUDGET_TOLERANCE_DECADES
    holdout: int = 0                  # largest-compute runs held out for a forecast check


@dataclass
class TableFit:
    result: FitResult
    columns: dict[str, str]           # role -> column used
    data: dict[str, np.ndarray]       # role -> values used, row-aligned


def _values(table: pd.DataFrame, column: str) -> np.ndarray:
    return records.numeric(table, column)


def _label(table: pd.DataFrame, column: str) -> str:
    return f"{records.source(table)}: column {column!r}"


def resolve_n_d_c(table: pd.DataFrame, columns: Columns) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """N, D and C columns and values; D = C / (6 N) when only C is available, C = 6 N D when only D is."""
    n_col = records.pick_column(table, columns.n, records.PARAMS_COLUMNS, "parameter-count (N)")
    n = _values(table, n_col)
    used = {"n": n_col}
    d_col = columns.d
    c_col = columns.c
    if d_col is None and c_col is None:
        d_col = next((name for name in records.TOKENS_COLUMNS if name in table.columns), None)
        c_col = next((name for name in records.COMPUTE_COLUMNS if name in table.columns), None)
        if d_col is None and c_col is None:
            raise FitError(f"{records.source(table)}: no tokens (D) or compute (C) column; give --d-col or --c-col")
    d = _values(table, d_col) if d_col else None
    c = _values(table, c_col) if c_col else None
    if d is None:
        d = c / (6.0 * n)
        used["d"] = f"{c_col} / (6 {n_col})"
    else:
        used["d"] = d_col
    if c is None:
        c = 6.0 * n * d
        used["c"] = f"6 {n_col} {d_col}"
    else:
        used["c"] = c_col
    return used, {"n": n, "d": d, "c": c}


def fit_table(table: pd.DataFrame, form: str, columns: Columns = Columns(), options: FitOptions = FitOptions(),
              progress: Callable[[str], None] | None = None) -> TableFit:
    """Fit `form` to the runs in `table`; FitError for anything the data cannot support."""
    if form not in FORMS:
        raise FitError(f"unknown form {form!r}; choose from {', '.join(FORMS)}")
    boot = {"bootstrap": options.bootstrap, "seed": options.seed, "ci_level": options.ci_level}
    if form in ("power", "loglinear"):
        x_col = records.pick_column(table, columns.x, records.COMPUTE_COLUMNS, "x")
        y_col = columns.y or records.pick_column(table, columns.loss, records.LOSS_COLUMNS, "y")
        x, y = _values(table, x_col), _values(table, y_col)
        names = {"x_name": _label(table, x_col), "y_name": _label(table, y_col)}
        if form == "power":
            def fit(rows: np.ndarray, **extra) -> FitResult:
                return power.fit_power(x[rows], y[rows], direction=options.direction, **names, **extra)

            def forecast(result: FitResult, rows: np.ndarray) -> np.ndarray:
                return power.predict(result.params, x[rows], result.extra["direction"])
        else:
            def fit(rows: np.ndarray, **extra) -> FitResult:
                return loglinear.fit_loglinear(x[rows], y[rows], **names, **extra)

            def forecast(result: FitResult, rows: np.ndarray) -> np.ndarray:
                return loglinear.predict(result.params, x[rows])
        used, data = {"x": x_col, "y": y_col}, {"x": x, "y": y}
        compute, observed = x, y
    else:
        loss_col = records.pick_column(table, columns.loss, records.LOSS_COLUMNS, "loss")
        loss = _values(table, loss_col)
        if form == "frontier" and (columns.c or any(name in table.columns for name in records.COMPUTE_COLUMNS)):
            c_col = records.pick_column(table, columns.c, records.COMPUTE_COLUMNS, "compute (C)")
            used, data = {"c": c_col}, {"c": _values(table, c_col), "n": None, "d": None}
        else:
            used, data = resolve_n_d_c(table, columns)
        used["loss"], data["loss"] = loss_col, loss
        n, d, c = data["n"], data["d"], data["c"]
        compute, observed = c, loss
        if form == "chinchilla":
            def fit(rows: np.ndarray, **extra) -> FitResult:
                return chinchilla.fit_chinchilla(n[rows], d[rows], loss[rows], progress=progress, **extra)

            def forecast(result: FitResult, rows: np.ndarray) -> np.ndarray:
                return chinchilla.predict_loss(result.params, n[rows], d[rows])
        elif form == "isoflop":
            if columns.budget:
                records.require_column(table, columns.budget)
                budgets = np.unique(table[columns.budget].astype(str).to_numpy(), return_inverse=True)[1]
                used["budget"] = columns.budget
            else:
                budgets = isoflop.group_budgets(as_positive(c, _label(table, used["c"])), options.budget_tolerance)
                used["budget"] = f"runs within {options.budget_tolerance} decades of compute"
            data["budget"] = budgets

            def fit(rows: np.ndarray, **extra) -> FitResult:
                return isoflop.fit_isoflop(n[rows], loss[rows], c[rows], budgets=budgets[rows], **extra)

            forecast = None  # approach 2 predicts an allocation, not a loss per run
        else:
            def fit(rows: np.ndarray, **extra) -> FitResult:
                return frontier.fit_frontier(c[rows], loss[rows], **extra)

            def forecast(result: FitResult, rows: np.ndarray) -> np.ndarray:
                return power.predict(result.params, c[rows], "falling")

    everything = np.arange(len(table))
    result = fit(everything, **boot)
    result.extra["columns"] = used
    if options.holdout > 0:
        if forecast is None:
            raise FitError(f"{form}: a held-out forecast is not defined for this form")
        result.extra["holdout"] = holdout.holdout_forecast(compute, observed, options.holdout,
                                                           lambda rows: fit(rows, bootstrap=0), forecast)
    return TableFit(result=result, columns=used, data=data)
