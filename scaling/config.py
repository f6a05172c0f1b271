"""Trial configuration: frozen dataclasses (data, model, train, mesh), JSON round trip, overrides.

A TrialConfig is the whole description of one training run; its canonical JSON hashes to the
trial id. Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any, Literal, Sequence

from models.config import ModelConfig


class ConfigError(ValueError):
    """A bad configuration key or value; the message names it."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """name: dataset name or path (see `python -m data --help`). max_len: history length; training
    rows hold max_len + 1 items (history and its next item), eval rows the last max_len items.
    whole_epochs: each epoch ends with its own partial batch, topped up with empty rows, as the
    reference's DataLoader does; false: batches run on across epoch ends, always full."""

    name: str = "ml-100k"
    format: str = ""
    columns: str = ""
    user_core: int = 0
    item_core: int = 0
    split: Literal["reference", "holdout"] = "reference"
    max_len: int = 200
    packed: bool = False
    window: Literal["recent", "random"] = "recent"
    whole_epochs: bool = False

    @property
    def row_len(self) -> int:
        return self.max_len + 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """steps > 0 wins over epochs. loss: sampled_softmax (negatives, temperature) or
    full_softmax. schedule: constant, or cosine decay to 0 after warmup_steps of linear warm-up.
    grad_accum: micro-batches per step; 0 = auto (scaling.trainer.auto_grad_accum)."""

    batch_size: int = 128
    steps: int = 0
    epochs: float = 101.0
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    grad_accum: int = 0
    loss: Literal["sampled_softmax", "full_softmax"] = "sampled_softmax"
    negatives: int = 128
    temperature: float = 0.05
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    eval_batch_size: int = 128
    checkpoint_every: int = 0
    keep_checkpoints: int = 2


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """spec: "auto" (all devices on data) or sizes like "data=2,fsdp=2,tensor=2"."""

    spec: str = "auto"


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @property
    def trial_id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def validate(self) -> "TrialConfig":
        try:
            self.model.validate()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        checks = [
            (self.data.max_len >= 1, "data.max_len must be >= 1"),
            (self.data.row_len <= self.model.max_positions,
             f"data.max_len + 1 = {self.data.row_len} exceeds model.max_positions = {self.model.max_positions}"),
            (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.train.grad_accum == 0 or (self.train.grad_accum >= 1 and self.train.batch_size % self.train.grad_accum == 0),
             f"train.batch_size={self.train.batch_size} is not divisible by train.grad_accum={self.train.grad_accum}"),
            (self.train.steps > 0 or self.train.epochs > 0, "train.steps or train.epochs must be > 0"),
            (self.train.learning_rate > 0, "train.learning_rate must be > 0"),
            (self.train.negatives >= 1, "train.negatives must be >= 1"),
            (self.train.temperature > 0, "train.temperature must be > 0"),
            (self.train.log_every >= 1, "train.log_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert a JSON value (or override string) to the field's declared type."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise ConfigError(f"{key}={value!r}; allowed: {', '.join(map(str, typing.get_args(annotation)))}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{key}={value!r} is not a boolean")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} is not an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} is not a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r} is not a string")
    raise ConfigError(f"{key}: unsupported field type {annotation}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'} must be an object, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, annotation, f"{prefix}{name}")
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> TrialConfig:
    return _build(TrialConfig, values, "")


def from_json(text: str) -> TrialConfig:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config is not valid JSON: {error}") from None
    return from_dict(values)


def with_overrides(config: TrialConfig, overrides: Sequence[str]) -> TrialConfig:
    """Apply `section.key=value` overrides (e.g. `model.blocks=4`, `train.learning_rate=3e-4`)."""
    values = config.to_dict()
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {override!r} is not section.key=value")
        section, name = parts
        if section not in values:
            raise ConfigError(f"unknown config section {section!r} in {override!r}; known: {', '.join(values)}")
        if name not in values[section]:
            raise ConfigError(f"unknown config key {key}; known: {', '.join(sorted(values[section]))}")
        values[section][name] = raw
    return from_dict(values)
