"""Figures of runs and fitted laws, each written as PNG and SVG. Log axes wherever the law is a power.

Every function takes plain arrays (and a FitResult where a law is drawn) and an output stem
(path without suffix); it returns the written paths.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from analysis import bootstrap as boot  # noqa: E402
from analysis import chinchilla, isoflop, power  # noqa: E402
from analysis.floors import Floor  # noqa: E402
from analysis.result import FitResult  # noqa: E402

# Axis labels with units, keyed by the column they show.
UNITS = {
    "train_flops": "training compute C (FLOP)",
    "Training FLOP": "training compute C (FLOP)",
    "params": "parameters N (count)",
    "params_non_embedding": "non-embedding parameters N (count)",
    "params_active": "active parameters per token N (count)",
    "Model Size": "parameters N (count)",
    "tokens": "training tokens D (count)",
    "eval_loss": "eval loss (nats / prediction)",
    "final_train_loss": "final train loss (nats / prediction)",
    "loss": "loss (nats / token)",
    "seq_len": "sequence length (items)",
    "max_len": "sequence length (items)",
    "mfu": "MFU (fraction of peak FLOP/s)",
    "wall_seconds": "wall time (s)",
}


def axis_label(column: str) -> str:
    if column in UNITS:
        return UNITS[column]
    if column.startswith(("hr@", "ndcg@", "valid_hr@", "valid_ndcg@")) or column in ("mrr", "valid_mrr"):
        return f"{column} (fraction of test users)"
    return column


_SUPERSCRIPT = str.maketrans("0123456789-", "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b")


def plain_tick_label(label: str) -> str:
    """A log axis's mathtext tick label ($\\mathdefault{2\\times10^{3}}$) as plain text (2\u00d710\u00b3); any
    other label unchanged. Laying out mathtext took half of a small report's time."""
    match = re.fullmatch(r"\$\\mathdefault\{([^{}]*(?:\^\{-?\d+\})?)\}\$", label)
    if match is None:
        return label
    text = match.group(1).replace("\\times", "\u00d7")
    text = re.sub(r"\^\{(-?\d+)\}", lambda power: power.group(1).translate(_SUPERSCRIPT), text)
    return label if "\\" in text or "^" in text else text


class _PlainLogFormatter(ticker.LogFormatterSciNotation):
    def __call__(self, x: float, pos: int | None = None) -> str:
        return plain_tick_label(super().__call__(x, pos))


def _plain_log_ticks(figure: plt.Figure) -> None:
    """Every log axis of the figure labelled in plain text, its formatters' settings kept."""
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for formatter in (axis.get_major_formatter(), axis.get_minor_formatter()):
                if type(formatter) is ticker.LogFormatterSciNotation:
                    formatter.__class__ = _PlainLogFormatter


def _save(figure: plt.Figure, stem: str | Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    _plain_log_ticks(figure)
    figure.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    figure.savefig(paths[0], dpi=130)
    figure.savefig(paths[1])
    plt.close(figure)
    return paths


def _grid(values: np.ndarray, log: bool, points: int = 200, stretch: float = 1.0) -> np.ndarray:
    low, high = float(np.min(values)), float(np.max(values)) * stretch
    return np.geomspace(low, high, points) if log else np.linspace(low, high, points)


def _draw_law(ax: plt.Axes, grid: np.ndarray, result: FitResult, predict: Callable[[dict], np.ndarray],
              label: str, color: str = "C3") -> None:
    ax.plot(grid, predict(result.params), color=color, label=label)
    names = list(result.params)
    band = boot.band(lambda row: predict(dict(zip(names, row))), result.samples, result.ci_level)
    if band is not None:
        ax.fill_between(grid, *band, color=color, alpha=0.2, label=f"{result.ci_level:.0%} bootstrap band")


def _floor_line(ax: plt.Axes, floor: Floor | None) -> None:
    """The generator's irreducible loss as a line (and the oracle's, dotted, where it differs)."""
    if floor is None:
        return
    ax.axhline(floor.value, color="k", ls="-.", lw=1, label=floor.label)
    if floor.kind == "Bayes" and np.isfinite(floor.oracle) and floor.oracle < floor.value:
        ax.axhline(floor.oracle, color="0.4", ls=":", lw=1,
                   label=f"oracle floor (knows each user's taste): {floor.oracle:.4g}")


def _floor_limits(ax: plt.Axes, values: np.ndarray, floor: Floor | None) -> None:
    """y limits that hold the data and the floor lines (not a bootstrap band's far tail)."""
    low = min(np.min(values), floor.oracle if floor is not None and np.isfinite(floor.oracle) else np.inf,
              floor.value if floor is not None else np.inf)
    ax.set_ylim(low / 1.1, np.max(values) * 1.15)


def law_text(result: FitResult, digits: int = 3) -> str:
    """The fitted parameters with their intervals, one line (for legends and titles)."""
    parts = []
    for name, value in result.params.items():
        interval = result.ci.get(name)
        parts.append(f"{name}={value:.{digits}g}" + (f" [{interval[0]:.{digits}g}, {interval[1]:.{digits}g}]" if interval else ""))
    return ", ".join(parts)


def loss_vs_compute(compute: np.ndarray, loss: np.ndarray, on_front: np.ndarray, fit: FitResult | None,
                    stem: str | Path, x_label: str = "train_flops", y_label: str = "eval_loss",
                    floor: Floor | None = None) -> list[Path]:
    """All runs, the lower envelope, and the frontier law with its band; the source's
    irreducible loss as a line when it has one."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(compute, loss, s=18, color="0.6", label="runs")
    order = np.argsort(compute[on_front])
    ax.plot(compute[on_front][order], loss[on_front][order], "o-", color="C0", ms=5, label="frontier (lower envelope)")
    if fit is not None:
        grid = _grid(compute, log=True, stretch=2.0)
        _draw_law(ax, grid, fit, lambda p: power.predict(p, grid, "falling"),
                  f"L = E + A C^-alpha: E={fit.params['E']:.3g}, alpha={fit.params['alpha']:.3g}")
    _floor_line(ax, floor)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if floor is not None:
        _floor_limits(ax, loss, floor)
    ax.set_xlabel(axis_label(x_label))
    ax.set_ylabel(axis_label(y_label))
    ax.set_title("Loss vs compute")
    ax.legend(fontsize=8)
    return _save(figure, stem)


def fitted_curve(x: np.ndarray, y: np.ndarray, fit: FitResult, predict: Callable[[dict, np.ndarray], np.ndarray],
                 stem: str | Path, x_label: str, y_label: str, log_y: bool) -> list[Path]:
    """Points and a fitted law of one variable (power or loglinear) with its bootstrap band."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, y, s=20, color="C0", label="runs", zorder=3)
    grid = _grid(x, log=True)
    _draw_law(ax, grid, fit, lambda p: predict(p, grid), f"{fit.form}: {law_text(fit)}")
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(axis_label(x_label))
    ax.set_ylabel(axis_label(y_label))
    ax.set_title(f"{y_label} vs {x_label}")
    ax.legend(fontsize=7)
    return _save(figure, stem)


def size_curves(curves: Sequence[tuple], stem: str | Path, x_label: str, y_label: str,
                floor: Floor | None = None) -> list[Path]:
    """Loss against size for several data sizes: per (label, x, y, fit, ...) its points and its
    law with the bootstrap band, one colour each; the source's irreducible loss as a line."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(curves))) if len(curves) > 1 else ["C0"]
    for color, (label, x, y, fit, *_) in zip(colors, curves):
        ax.scatter(x, y, s=20, color=color, zorder=3)
        grid = _grid(x, log=True)
        _draw_law(ax, grid, fit, lambda p: power.predict(p, grid),
                  f"{label}: E={fit.params['E']:.4g}, alpha={fit.params['alpha']:.3g}", color=color)
    _floor_line(ax, floor)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _floor_limits(ax, np.concatenate([np.asarray(c[2], float) for c in curves]), floor)
    ax.set_xlabel(axis_label(x_label))
    ax.set_ylabel(axis_label(y_label))
    ax.set_title(f"{y_label} vs {x_label}")
    ax.legend(fontsize=7)
    return _save(figure, stem)


def isoflop_curves(n: np.ndarray, loss: np.ndarray, compute: np.ndarray, labels: np.ndarray, fit: FitResult,
                   stem: str | Path, floor: Floor | None = None) -> list[Path]:
    """Left: loss vs N per budget (`labels` 0..k-1) with its parabola and vertex. Right: N*(C) and the power law."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(labels.max() + 1, 1)))
    minima = {round(np.log10(m.compute), 6): m for m in isoflop.budget_minima(fit)}
    for label in np.unique(labels):
        rows = labels == label
        budget = float(np.exp(np.mean(np.log(compute[rows]))))
        color = colors[label]
        left.scatter(n[rows], loss[rows], s=16, color=color, label=f"C = {budget:.2g} FLOP")
        minimum = minima.get(round(np.log10(budget), 6))
        if minimum is not None:
            grid = np.geomspace(n[rows].min(), n[rows].max(), 100)
            left.plot(grid, np.polyval(minimum.coefficients, np.log(grid)), color=color, lw=1)
            left.plot(minimum.n_opt, minimum.loss_opt, "*", color=color, ms=11, mec="k")
    _floor_line(left, floor)
    left.set_xscale("log")
    if floor is not None:
        _floor_limits(left, loss, floor)
    left.set_xlabel(axis_label("params"))
    left.set_ylabel("final loss (nats)")
    left.set_title("IsoFLOP profiles")
    left.legend(fontsize=7)
    budgets = np.array([m.compute for m in minima.values()])
    right.scatter(budgets, [m.n_opt for m in minima.values()], marker="*", s=80, color="C1", ec="k", label="N* per budget", zorder=3)
    grid = _grid(budgets, log=True, stretch=10.0)
    _draw_law(right, grid, fit, lambda p: isoflop.predict_n_opt(p, grid),
              f"N_opt = k C^a, a={fit.params['a_opt']:.3f}")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel(axis_label("train_flops"))
    right.set_ylabel("loss-optimal parameters N* (count)")
    right.set_title("Compute-optimal size")
    right.legend(fontsize=7)
    return _save(figure, stem)


def chinchilla_allocation(n: np.ndarray, d: np.ndarray, loss: np.ndarray, fit: FitResult, stem: str | Path,
                          floor: Floor | None = None) -> list[Path]:
    """Runs in (C, N) coloured by loss, with N_opt(C) from the joint law; and fitted vs observed loss."""
    compute = 6 * n * d
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    points = left.scatter(compute, n, c=loss, cmap="magma", s=16, norm=matplotlib.colors.LogNorm())
    figure.colorbar(points, ax=left, label="final loss (nats)")
    grid = _grid(compute, log=True, stretch=10.0)
    _draw_law(left, grid, fit, lambda p: chinchilla.compute_optimal(p, grid)[0],
              f"N_opt = G (C/6)^a, a={fit.params['a_opt']:.3f}")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("training compute C = 6ND (FLOP)")
    left.set_ylabel(axis_label("params"))
    left.set_title("Compute-optimal allocation")
    left.legend(fontsize=7)
    predicted = chinchilla.predict_loss(fit.params, n, d)
    right.scatter(loss, predicted, s=12)
    line = [min(loss.min(), predicted.min()), max(loss.max(), predicted.max())]
    right.plot(line, line, "k--", lw=1)
    _floor_line(right, floor)
    if floor is not None:
        right.axhline(fit.params["E"], color="C3", lw=1, label=f"fitted E = {fit.params['E']:.4g}")
        right.legend(fontsize=7)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("observed loss (nats)")
    right.set_ylabel("L(N, D) fitted (nats)")
    right.set_title("Joint law fit")
    return _save(figure, stem)


def residuals(x: np.ndarray, observed: np.ndarray, predicted: np.ndarray, stem: str | Path,
              x_label: str, title: str) -> list[Path]:
    """Relative residuals (predicted - observed) / observed against x."""
    figure, ax = plt.subplots(figsize=(7, 3.5))
    ax.axhline(0, color="k", lw=0.8)
    ax.scatter(x, 100 * (predicted - observed) / observed, s=16)
    ax.set_xscale("log")
    ax.set_xlabel(axis_label(x_label))
    ax.set_ylabel("residual (% of observed)")
    ax.set_title(title)
    return _save(figure, stem)


def _points_and_best(ax: plt.Axes, x: np.ndarray, metric: np.ndarray, color, label: str) -> None:
    """Every run as a faint point; a line through the best (highest) metric at each x, since runs at
    one x may differ in training length."""
    ax.scatter(x, metric, s=14, color=color, alpha=0.35)
    xs = np.unique(x)
    ax.plot(xs, [metric[x == value].max() for value in xs], "o-", color=color, label=f"{label} (best run)")


def metric_vs_params(params: np.ndarray, metric: np.ndarray, seq_len: np.ndarray, stem: str | Path,
                     metric_name: str, params_name: str = "params") -> list[Path]:
    """Metric against model size, one colour per sequence length."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    lengths = np.unique(seq_len)
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(lengths)))
    for color, length in zip(colors, lengths):
        rows = seq_len == length
        _points_and_best(ax, params[rows], metric[rows], color, f"length {length:g}")
    ax.set_xscale("log")
    ax.set_xlabel(axis_label(params_name))
    ax.set_ylabel(axis_label(metric_name))
    ax.set_title(f"{metric_name} vs model size, by sequence length")
    ax.legend(fontsize=8)
    return _save(figure, stem)


def metric_vs_seq_len(seq_len: np.ndarray, metric: np.ndarray, params: np.ndarray, stem: str | Path,
                      metric_name: str, seq_name: str = "max_len") -> list[Path]:
    """Metric against sequence length, one line per model size."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    sizes = np.unique(params)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
    for color, size in zip(colors, sizes):
        rows = params == size
        _points_and_best(ax, seq_len[rows], metric[rows], color, f"N = {size:.3g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(axis_label(seq_name))
    ax.set_ylabel(axis_label(metric_name))
    ax.set_title(f"{metric_name} vs sequence length, by model size")
    ax.legend(fontsize=8)
    return _save(figure, stem)


def mfu_vs_size(params: np.ndarray, mfu: np.ndarray, stem: str | Path, groups: np.ndarray | None = None,
                group_name: str = "", params_name: str = "params") -> list[Path]:
    """Model FLOPs utilisation against model size (optionally one colour per group, e.g. device kind)."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    if groups is None:
        ax.scatter(params, mfu, s=20)
    else:
        for value in _unique(groups):
            rows = groups == value
            ax.scatter(params[rows], mfu[rows], s=20, label=f"{group_name} {value}")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(axis_label(params_name))
    ax.set_ylabel(axis_label("mfu"))
    ax.set_title("MFU vs model size")
    return _save(figure, stem)


def training_curves(x: np.ndarray, y: np.ndarray, trials: np.ndarray, sizes: np.ndarray, stem: str | Path,
                    x_label: str, y_label: str, envelope: np.ndarray | None = None, fit: FitResult | None = None,
                    final_fit: FitResult | None = None, log_y: bool = True, floor: Floor | None = None) -> list[Path]:
    """One line per trial through its evaluations, one colour per model size; optionally the lower
    envelope of all evaluations with the law fitted to it (and its band), and the law of the
    final-point frontier dashed beside it."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    distinct = sorted(set(sizes.tolist()))
    colors = dict(zip(distinct, plt.cm.viridis(np.linspace(0, 0.9, len(distinct)))))
    for trial in _unique(trials):
        rows = trials == trial
        order = np.argsort(x[rows])
        ax.plot(x[rows][order], y[rows][order], "-o", ms=2.5, lw=1, alpha=0.85, color=colors[sizes[rows][0]])
    for size in distinct:
        ax.plot([], [], "-", color=colors[size], label=f"N = {size:.3g}")
    if envelope is not None:
        order = np.argsort(x[envelope])
        ax.plot(x[envelope][order], y[envelope][order], "k.", ms=5, label="lower envelope of all evaluations")
    grid = _grid(x, log=True, stretch=2.0)
    if fit is not None:
        _draw_law(ax, grid, fit, lambda p: power.predict(p, grid, "falling"),
                  f"whole-curve frontier: E={fit.params['E']:.3g}, alpha={fit.params['alpha']:.3g}")
    if final_fit is not None:
        ax.plot(grid, power.predict(final_fit.params, grid, "falling"), "--", color="C1",
                label=f"final-point frontier: E={final_fit.params['E']:.3g}, alpha={final_fit.params['alpha']:.3g}")
    _floor_line(ax, floor)
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
        _floor_limits(ax, y, floor)
    ax.set_xlabel(axis_label(x_label))
    ax.set_ylabel(axis_label(y_label))
    ax.set_title(f"{y_label} during training vs {x_label}")
    ax.legend(fontsize=7)
    return _save(figure, stem)


def loss_vs_learning_rate(lr: np.ndarray, loss: np.ndarray, sizes: np.ndarray, params: np.ndarray, stem: str | Path,
                          title: str, loss_label: str = "eval_loss") -> list[Path]:
    """Loss against the learning rate, one line per size (coloured by parameters, smallest
    first), each size's best learning rate starred."""
    figure, ax = plt.subplots(figsize=(7, 4.5))
    order = sorted(_unique(sizes), key=lambda size: float(np.max(params[sizes == size])))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(order)))
    for color, size in zip(colors, order):
        rows = sizes == size
        xs = np.unique(lr[rows])
        best_per_lr = np.array([np.min(loss[rows][lr[rows] == x]) for x in xs])
        ax.plot(xs, best_per_lr, "o-", color=color, ms=4, label=f"{size} (N = {np.max(params[rows]):.3g})")
        star = int(np.argmin(best_per_lr))
        ax.plot(xs[star], best_per_lr[star], "*", color=color, ms=15, markeredgecolor="k")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(axis_label(loss_label))
    ax.set_title(f"{loss_label} vs learning rate: {title}", fontsize=10)
    ax.legend(fontsize=7)
    return _save(figure, stem)


def _unique(values: np.ndarray) -> Sequence:
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen
