"""Sweep specs: a base trial config plus axes, expanded into trials.

A spec is a Python file (sweeps/configs/*.py) that defines `SWEEP = Sweep(...)`. Axes are lists
of Points; each Point carries config overrides ("model.blocks": 4) and the labels that name it in
results ("size": "d64x4"). grid() takes products, zipped() pairs axes element by element,
ladder() scales several keys together, isoflop() gives each size the steps that spend a budget,
tuned() gives each point a small grid of learning rates (warm-ups, batch sizes).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
from pathlib import Path
from typing import Any, Mapping, Sequence

from models.core import family as families
from scaling.config import ConfigError, TrialConfig, with_overrides
from scaling.engine import flops


@dataclasses.dataclass(frozen=True)
class Point:
    """One value of one or more axes: config overrides and the labels recorded with results.
    tuning: the labels whose values tune hyper-parameters (tuned()), not what the point is."""

    overrides: Mapping[str, Any]
    labels: Mapping[str, Any]
    tuning: tuple[str, ...] = ()

    def merge(self, other: "Point") -> "Point":
        clash = set(self.overrides) & set(other.overrides)
        if clash:
            raise ConfigError(f"two axes both set {sorted(clash)[0]}")
        return Point({**self.overrides, **other.overrides}, {**self.labels, **other.labels},
                     self.tuning + other.tuning)


def axis(name: str, key: str, values: Sequence[Any], labels: Sequence[Any] | None = None) -> list[Point]:
    """One config key over `values` (e.g. axis("seq_len", "data.max_len", [50, 200]))."""
    if not len(values):
        raise ConfigError(f"axis {name}: no values (a sweep over it would have no trials)")
    labels = list(values) if labels is None else list(labels)
    if len(labels) != len(values):
        raise ConfigError(f"axis {name}: {len(values)} values but {len(labels)} labels")
    return [Point({key: value}, {name: label}) for value, label in zip(values, labels)]


def ladder(name: str, rungs: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> list[Point]:
    """Several keys scaled together, e.g. model size as (blocks, d_model, heads) rungs."""
    if not rungs:
        raise ConfigError(f"ladder {name}: no rungs (a sweep over it would have no trials)")
    labels = list(labels) if labels is not None else [
        "-".join(f"{key.split('.')[-1]}{value}" for key, value in rung.items()) for rung in rungs]
    return [Point(dict(rung), {name: label}) for rung, label in zip(rungs, labels)]


def grid(*axes: Sequence[Point]) -> list[Point]:
    """Every combination of the axes' points."""
    points = []
    for combo in itertools.product(*axes):
        merged = Point({}, {})
        for point in combo:
            merged = merged.merge(point)
        points.append(merged)
    return points


def zipped(*axes: Sequence[Point]) -> list[Point]:
    """The i-th points of every axis together; the axes must have equal lengths."""
    lengths = {len(a) for a in axes}
    if len(lengths) != 1:
        raise ConfigError(f"zipped axes have different lengths {sorted(lengths)}")
    points = []
    for combo in zip(*axes):
        merged = Point({}, {})
        for point in combo:
            merged = merged.merge(point)
        points.append(merged)
    return points


TUNED_KEYS = {"lr": "train.learning_rate", "warmup": "train.warmup_steps", "batch": "train.batch_size"}


def tuned(points: Sequence[Point], learning_rates: Sequence[float], warmup_steps: Sequence[int] | None = None,
          batch_sizes: Sequence[int] | None = None) -> list[Point]:
    """Every point at every combination of a small grid of learning rates (and warm-up lengths,
    batch sizes): labels lr (warmup, batch). The report keeps, per point, the run of lowest
    validation loss (the tuned envelope; the sweep must hold the validation target out of
    training, data.split=holdout) and fits its laws on those, beside the laws of the runs
    at the base config's values (untuned); `python -m analysis report` shows the loss against
    the learning rate per size with each optimum."""
    grids = [("lr", learning_rates), ("warmup", warmup_steps), ("batch", batch_sizes)]
    axes_ = [[Point({TUNED_KEYS[name]: value}, {name: value}, (name,)) for value in values]
             for name, values in grids if values is not None]
    for name, values in grids:
        if values is not None and not len(values):
            raise ConfigError(f"tuned: no {name} values")
    return grid(points, *axes_)


def _configure(base: TrialConfig, point: Point, sweep_name: str) -> TrialConfig:
    """base with the point's overrides; a bad key or value names the sweep and the trial."""
    try:
        return with_overrides(base, [f"{key}={value}" for key, value in point.overrides.items()])
    except ConfigError as error:
        labels = " ".join(f"{k}={v}" for k, v in point.labels.items()) or "(base)"
        raise ConfigError(f"{f'sweep {sweep_name}, ' if sweep_name else ''}trial {labels}: {error}") from None


def train_flops_per_step(config: TrialConfig, num_items: int) -> float:
    """Model FLOPs of one step with every row full of one user's window (packed rows, or users
    with at least max_len + 1 interactions): the planning estimate behind isoflop()."""
    counts = families.of(config.model).full_row_counts(config.model, config.train.batch_size, config.data.row_len)
    return flops.model_flops_from_counts(config.model, config.train, counts, num_items)


def planned_compute(base: TrialConfig, point: Point, num_items: int, sweep_name: str = "") -> float:
    """Training FLOPs of base with the point applied, at its configured steps (the planning
    estimate of train_flops_per_step): e.g. an IsoFLOP budget equal to one run of a size ladder."""
    config = _configure(base, point, sweep_name)
    return train_flops_per_step(config, num_items) * config.train.steps


def isoflop(budgets: Sequence[float], sizes: Sequence[Point], base: TrialConfig, num_items: int,
            sweep_name: str = "") -> list[Point]:
    """For each compute budget C and point (a size, or any combination of axes applied to base),
    the steps that spend C: steps = C / FLOPs per step of that point's config."""
    points = []
    for budget in budgets:
        for size in sizes:
            config = _configure(base, size, sweep_name)
            steps = max(1, round(budget / train_flops_per_step(config, num_items)))
            points.append(size.merge(Point({"train.steps": steps}, {"budget": budget})))
    return points


@dataclasses.dataclass(frozen=True)
class Trial:
    """tuning: its labels that tune hyper-parameters (tuned()); tuning_default: whether their
    values are the base config's (the untuned run of its point)."""

    config: TrialConfig
    labels: Mapping[str, Any]
    tuning: tuple[str, ...] = ()
    tuning_default: bool = False

    @property
    def trial_id(self) -> str:
        return self.config.trial_id


@dataclasses.dataclass(frozen=True)
class Sweep:
    """name: used in resource names and reports. launcher: defaults for TPU launchers
    (accelerator_type, zone, ...), overridable by flags. num_items: the catalogue size to plan
    with (`sweeps show --accelerator`) where the dataset cannot be read here. The report fits
    every law the results support (`python -m analysis report`), so a spec says nothing about
    analysis."""

    name: str
    base: TrialConfig
    points: Sequence[Point]
    launcher: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""
    num_items: int | None = None

    def trials(self) -> list[Trial]:
        trials, seen = [], set()
        for point in self.points or [Point({}, {})]:
            config = _configure(self.base, point, self.name)
            if config.trial_id in seen:
                raise ConfigError(f"sweep {self.name}: two points give the same trial ({dict(point.labels)})")
            seen.add(config.trial_id)
            if point.tuning and config.data.split != "holdout":
                labels = " ".join(f"{k}={v}" for k, v in point.labels.items())
                raise ConfigError(f"sweep {self.name}, trial {labels}: a tuned point keeps its run of lowest validation "
                                  f"loss, and under data.split={config.data.split} the validation target is trained "
                                  "on; set data.split=holdout")
            default = all(_value(config, TUNED_KEYS[name]) == _value(self.base, TUNED_KEYS[name]) for name in point.tuning)
            trials.append(Trial(config, dict(point.labels), point.tuning, default and bool(point.tuning)))
        return trials


def _value(config: TrialConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def load_spec(path: str | Path) -> Sweep:
    """Execute a spec file and return its SWEEP."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep spec file")
    module_spec = importlib.util.spec_from_file_location(f"sweep_spec_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except Exception as error:  # the spec is user code: name it, do not dump a traceback
        raise ConfigError(f"{path}: {type(error).__name__}: {error}") from None
    sweep = getattr(module, "SWEEP", None)
    if not isinstance(sweep, Sweep):
        raise ConfigError(f"{path}: defines no SWEEP = Sweep(...)")
    try:
        sweep.trials()  # every trial's config is checked before anything runs
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return sweep


def describe(trial: Trial, num_items: int | None = None) -> dict[str, Any]:
    """One line of `show`: id, labels, size, sequence length, planned tokens and FLOPs."""
    config = trial.config
    steps = config.train.steps
    row = {"trial_id": trial.trial_id, **trial.labels,
           "params_non_embedding": flops.non_embedding_params(config.model),
           "max_len": config.data.max_len, "steps": steps or f"{config.train.epochs:g} epochs"}
    if steps:
        row["tokens_max"] = steps * config.train.batch_size * config.data.row_len
        if num_items or config.train.loss == "sampled_softmax":  # sampled: no term depends on the catalogue
            row["flops_max"] = steps * train_flops_per_step(config, num_items or 0)
    return row


def format_number(value: Any) -> str:
    if isinstance(value, float) and value >= 1e5:
        return f"{value:.3g}"
    if isinstance(value, int) and value >= 10**6:
        return f"{value:.3g}"
    return str(value)

