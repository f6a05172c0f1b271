"""Trial configuration: frozen dataclasses (data, model, train, mesh), JSON round trip, overrides.

A TrialConfig is the whole description of one training run. The model section is a tagged union:
`model.family` selects the registered family whose config class holds the fields
(models/core/family.py). Every value is checked when the config is built (field rules in
config/fields.py, cross-field rules in each section's check() and the family's check_trial), so
a bad value is one ConfigError naming the key before any data is read. The trial id hashes the
canonical form (Section.canonical): fields added after 2026-12-01 enter it only when they differ
from their defaults, so an upgrade leaves finished trials' ids unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar, Literal, Sequence

from config.fields import ConfigError, Section, build_section, constrained, non_negative, positive
from models.core import family as families
from models.core.config import ModelConfig
from models.core.family import FamilyConfig, model_config

__all__ = ["ConfigError", "DataConfig", "MeshConfig", "ModelConfig", "TrainConfig", "TrialConfig", "from_dict",
           "from_json", "with_overrides"]


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """name: dataset name or path (see `python -m data --help`). max_len: history length; training
    rows hold max_len + 1 items (history and its next item), eval rows the last max_len items.
    whole_epochs: each epoch ends with its own partial batch, topped up with empty rows, as the
    reference's DataLoader does; false: batches run on across epoch ends, always full.
    eval_users: evaluate on a fixed random subset of that many users, the same for every trial of
    the dataset (data.split.eval_subset; 0 = every user); training data is unchanged."""

    SECTION: ClassVar[str] = "data"
    ID_FIELDS: ClassVar[tuple[str, ...]] = ("name", "format", "columns", "user_core", "item_core", "split", "max_len",
                                            "packed", "window", "whole_epochs")

    name: str = "ml-100k"
    format: str = ""
    columns: str = ""
    user_core: int = non_negative(0)
    item_core: int = non_negative(0)
    split: Literal["reference", "holdout"] = "reference"
    max_len: int = positive(200)
    packed: bool = False
    window: Literal["recent", "random"] = "recent"
    whole_epochs: bool = False
    eval_users: int = non_negative(0)

    @property
    def row_len(self) -> int:
        return self.max_len + 1

    def check(self) -> None:
        if not self.name.strip():
            raise ConfigError("data.name='' names no dataset")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """steps > 0 wins over epochs (0 = train by epochs). loss: sampled_softmax (negatives,
    temperature) or full_softmax. negative_sampler: "uniform", `negatives` items per position
    drawn uniformly from the catalogue; "shared", `negatives` uniform draws per step shared by
    every position (one matmul); "in_batch", the targets of `negatives` positions drawn from the
    step's supervised positions (items by their in-batch frequency), logQ-corrected. schedule:
    constant, or cosine decay to 0 after warmup_steps of linear warm-up, or rsqrt (T5's and
    TIGER's: constant for warmup_steps, then decaying as 1 / sqrt(step)). table_optimizer: how the
    catalogue tables are updated: "adam" (dense AdamW, as every other parameter), "lazy_adam" or
    "rowwise_adagrad" (only the rows a step touches; scaling/engine/table_optimizers.py), at
    table_learning_rate (0 = learning_rate) on the same schedule. grad_accum: micro-batches per
    step; 0 = auto (scaling.engine.compiled.auto_grad_accum). eval_every / checkpoint_every: steps between
    them, 0 = only at the end. eval_points: that many evaluations spread evenly over the run (the
    last at the end), for training curves, beside eval_every; an observation, not part of the
    trial id. exclude_history: full ranking without the user's history items (the lab's rule),
    or with them (false: the published papers' rule); the other rule's metrics are reported
    beside (history_included_hr@10 / history_excluded_hr@10, ...)."""

    SECTION: ClassVar[str] = "train"
    ID_FIELDS: ClassVar[tuple[str, ...]] = (
        "batch_size", "steps", "epochs", "learning_rate", "beta1", "beta2", "eps", "weight_decay", "schedule",
        "warmup_steps", "grad_accum", "loss", "negatives", "temperature", "seed", "log_every", "eval_every",
        "eval_batch_size", "checkpoint_every", "keep_checkpoints")
    OBSERVATION: ClassVar[tuple[str, ...]] = ("eval_points",)

    batch_size: int = positive(128)
    steps: int = non_negative(0, ">= 0 (0 = train by epochs)")
    epochs: float = non_negative(101.0, "finite and > 0 when train.steps=0")
    learning_rate: float = positive(1e-3)
    beta1: float = constrained(0.9, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    beta2: float = constrained(0.98, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    eps: float = positive(1e-8)
    weight_decay: float = non_negative(0.0, "finite and >= 0")
    schedule: Literal["constant", "cosine", "rsqrt"] = "constant"
    warmup_steps: int = non_negative(0)
    grad_accum: int = non_negative(0, ">= 0 (0 = auto)")
    loss: Literal["sampled_softmax", "full_softmax"] = "sampled_softmax"
    negatives: int = positive(128)
    negative_sampler: Literal["uniform", "shared", "in_batch"] = "uniform"
    table_optimizer: Literal["adam", "lazy_adam", "rowwise_adagrad"] = "adam"
    table_learning_rate: float = non_negative(0.0, "finite and >= 0 (0 = train.learning_rate)")
    temperature: float = positive(0.05)
    seed: int = constrained(0, lambda v: 0 <= v < 2**32, "in [0, 2**32)")
    log_every: int = positive(10)
    eval_every: int = non_negative(0, ">= 0 (0 = only at the end)")
    eval_points: int = non_negative(0, ">= 0 (0 = none beside eval_every)")
    eval_batch_size: int = positive(128)
    checkpoint_every: int = non_negative(0, ">= 0 (0 = only at the end)")
    keep_checkpoints: int = positive(2)
    exclude_history: bool = True

    def check(self) -> None:
        if self.steps == 0 and not self.epochs > 0:
            raise ConfigError(f"train.epochs={self.epochs!r} must be > 0 when train.steps=0 (train by epochs)")
        if self.loss == "full_softmax":
            for key, value, default in (("negative_sampler", self.negative_sampler, "uniform"),
                                        ("table_optimizer", self.table_optimizer, "adam")):
                if value != default:
                    raise ConfigError(f"train.{key}={value!r} needs train.loss='sampled_softmax' "
                                      f"(train.loss='full_softmax' scores every item)")
        if self.grad_accum and self.batch_size % self.grad_accum:
            raise ConfigError(f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """spec: "auto" (all devices on data) or sizes like "data=2,fsdp=2,tensor=2"."""

    SECTION: ClassVar[str] = "mesh"
    ID_FIELDS: ClassVar[tuple[str, ...]] = ("spec",)

    spec: str = "auto"


SECTIONS = {"data": DataConfig, "model": FamilyConfig, "train": TrainConfig, "mesh": MeshConfig}


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = DataConfig()
    model: FamilyConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()

    def __post_init__(self) -> None:
        families.of(self.model).check_trial(self.model, self.data, self.train)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).to_dict() if name == "model" else dataclasses.asdict(getattr(self, name))
                for name in SECTIONS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    def canonical(self) -> dict[str, Any]:
        """What the trial id hashes (see Section.canonical and FamilyConfig.canonical)."""
        return {name: getattr(self, name).canonical() for name in SECTIONS}

    @property
    def trial_id(self) -> str:
        canonical = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def from_dict(values: dict[str, Any], droppable_model_keys: frozenset[str] | set[str] = frozenset()) -> TrialConfig:
    if not isinstance(values, dict):
        raise ConfigError(f"config must be an object, got {values!r}")
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; known: {', '.join(SECTIONS)}")
    sections = {name: build_section(cls, values[name], f"{name}.") for name, cls in SECTIONS.items()
                if name in values and name != "model"}
    if "model" in values:
        sections["model"] = model_config(values["model"], droppable_model_keys)
    return TrialConfig(**sections)


def from_json(text: str) -> TrialConfig:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config is not valid JSON: {error}") from None
    return from_dict(values)


def with_overrides(config: TrialConfig, overrides: Sequence[str]) -> TrialConfig:
    """Apply `section.key=value` overrides (e.g. `model.blocks=4`, `train.learning_rate=3e-4`).

    `model.family=NAME` switches the family: the shared keys carry over; the base config's keys
    that the new family lacks are dropped, except the 2026-12-01 keys away from their defaults,
    which it keeps as legacy values (so old ids hold); keys set by these overrides are checked
    against the new family."""
    values = config.to_dict()
    set_model_keys = set()
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {override!r} is not section.key=value")
        section, name = parts
        if section not in values:
            raise ConfigError(f"unknown config section {section!r} in {override!r}; known: {', '.join(values)}")
        if section == "model":
            set_model_keys.add(name)  # checked against the family the overrides end with
        elif name not in values[section]:
            raise ConfigError(f"unknown config key {key}; known: {', '.join(sorted(values[section]))}")
        values[section][name] = raw
    switched = values["model"]["family"] != config.model.family
    droppable = set(config.to_dict()["model"]) - set_model_keys if switched else set()
    return from_dict(values, droppable)
