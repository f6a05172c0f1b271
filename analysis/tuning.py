"""Tuned envelopes: a sweep whose points each ran a small grid of learning rates (sweeps.spec.tuned).

Per point (the runs that share every label but the tuning ones), the run of lowest validation loss
is the point's result: the tuned envelope, which the report's tables and laws use. The runs at the
base config's values (tuning_default) give the untuned laws beside them. Per size, the loss
against the learning rate shows where the optimum lies and, across sizes, how far it moves in
grid steps: the test of a parametrization whose optimum should transfer (µP).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.errors import FitError

SIZE_LABEL = "size"  # the ladder label grouping a point's sizes in the learning-rate figures


@dataclasses.dataclass
class Tuning:
    tuning: list[str]  # the tuning labels (lr, warmup, batch)
    point: list[str]  # the labels that name a point
    runs: pd.DataFrame  # every run of the grid
    envelope: pd.DataFrame  # per point, its best run
    untuned: pd.DataFrame  # per point, its run at the base config's values


def split(table: pd.DataFrame, loss: str) -> Tuning | None:
    """The tuned envelope of a results table, or None when its sweep tuned nothing."""
    if "tuned" not in table.columns or table["tuned"].isna().all():
        return None
    tuning = sorted({name for value in table["tuned"].dropna() for name in str(value).split(",")})
    names = {name for value in table.get("labels", pd.Series(dtype=object)).dropna() for name in str(value).split(",")}
    point = [name for name in sorted(names) if name not in tuning and name in table.columns]
    values = pd.to_numeric(table[loss], errors="coerce")
    usable = table[values.notna()].copy()
    if usable.empty:
        raise FitError(f"no run of the tuning grid has a value of {loss}")
    usable["_loss"] = values[values.notna()]
    keys = point or ["tuned"]
    best = usable.loc[usable.groupby(keys, dropna=False)["_loss"].idxmin()]
    default = usable["tuning_default"].astype(bool) if "tuning_default" in usable.columns else pd.Series(False, usable.index)
    clean = lambda frame: frame.drop(columns="_loss").reset_index(drop=True)
    result = Tuning(tuning, point, clean(usable), clean(best), clean(usable[default]))
    for frame in (result.runs, result.envelope, result.untuned):
        frame.attrs.update(table.attrs)
    return result


def groups(tuning: Tuning) -> list[tuple[str, pd.DataFrame]]:
    """(title, runs) per combination of the point labels other than the size."""
    others = [name for name in tuning.point if name != SIZE_LABEL]
    if not others:
        return [("all runs", tuning.runs)]
    return [(", ".join(f"{k}={v}" for k, v in zip(others, key if isinstance(key, tuple) else (key,))), frame)
            for key, frame in tuning.runs.groupby(others, sort=True)]


def grid_table(runs: pd.DataFrame, tuning: list[str], size: str, loss: str) -> tuple[list[str], list[list[str]], dict]:
    """(header, rows, optima) of one group: a row per size (by `size`, ascending), a column per
    tuning value (the learning rate when only it is tuned), the best cell starred; optima:
    {size value: (best tuning value, its grid index)}."""
    setting = lambda row: ", ".join(f"{name}={row[name]:g}" for name in tuning)
    runs = runs.assign(_setting=runs.apply(setting, axis=1), _loss=pd.to_numeric(runs[loss], errors="coerce"))
    if size not in runs.columns:
        runs = runs.assign(**{size: "all"})
    order = sorted(runs["_setting"].unique(), key=lambda text: [float(part.split("=")[1]) for part in text.split(", ")])
    header = ["size", "params", *order, "best", "grid step"]
    rows, optima = [], {}
    params_col = next((c for c in ("params_non_embedding", "params") if c in runs.columns), None)
    by_params = lambda item: float(pd.to_numeric(item[1][params_col], errors="coerce").max()) if params_col else 0.0
    for size_value, frame in sorted(runs.groupby(size), key=by_params):
        cells = dict(zip(frame["_setting"], frame["_loss"]))
        best = min(cells, key=lambda key: cells[key] if np.isfinite(cells[key]) else np.inf)
        optima[size_value] = (best, order.index(best))
        params = frame[params_col].iloc[0] if params_col else float("nan")
        rows.append([str(size_value), f"{params:,.0f}" if np.isfinite(params) else "-",
                     *[("-" if key not in cells else f"{cells[key]:.4f}" + (" *" if key == best else "")) for key in order],
                     best, str(order.index(best))])
    return header, rows, optima
