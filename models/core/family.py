"""The model-family seam: what a family gives the engine, and the one registry of families.

A family is a Family subclass instance passed to `register()`. It supplies its config dataclass
(a FamilyConfig subclass, selected by `model.family`), `build` (a Model: init, loss_sums,
evaluate, step_counts as pure functions of params and a batch), its batch fields with logical
axes, analytic FLOPs from the counts its step returns, parameter counts, and the rules that need
the whole trial or the catalogue size. scaling/, sweeps/ and benchmarks/ call only this
interface. Built-in families are imported on first use; modules named in
$SCALING_LAB_FAMILIES (comma-separated) are imported too, so that trials started as
subprocesses know a family registered outside this repository.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import os
import typing
from typing import Any, ClassVar, Literal, Mapping

import numpy as np

from config.fields import ConfigError, Section, build_section, check_value, coerce, positive
from models.core import axes

BUILTIN_MODULES = {"hstu": "models.decoder_only.hstu", "sasrec": "models.decoder_only.sasrec",
                   "encdec": "models.encdec.family"}
PLUGINS_ENV = "SCALING_LAB_FAMILIES"
ACCELERATOR_PATHS_ENV = "SCALING_LAB_ACCELERATOR_PATHS"
# jax.named_scope names of a step's parts, shared by every family: they reach XLA's op metadata,
# and profiles are attributed by them (benchmarks/accelerator.py). Metadata only: no number changes.
ATTENTION_SCOPE = "attention"
EMBEDDING_SCOPE = "embedding_lookup"
NEGATIVES_SCOPE = "negatives"
LOSS_SCOPE = "loss"

Batch = Mapping[str, Any]
TRAIN_MULTIPLIER = 3  # FLOP convention: backward = 2 x forward for every matmul
ROW_IDS = "row_ids"  # (B,) int32 in a training batch: each row's index in the step's whole batch
STEP_INPUTS = "step_inputs"  # in a training (micro-)batch: Model.step_inputs of the step's whole batch


def accelerator_paths() -> bool:
    """Whether a CPU runs what a GPU or TPU runs ($SCALING_LAB_ACCELERATOR_PATHS=1): the plain
    autodiff forms of models/core/layers.py (hand_written_kernels) and one micro-batch per step
    (scaling.engine.compiled.auto_grad_accum), so that the accelerators' code is exercised, slower, on a
    CPU. Unset or 0: the CPU's own paths."""
    value = os.environ.get(ACCELERATOR_PATHS_ENV, "")
    if value not in ("", "0", "1"):
        raise ConfigError(f"${ACCELERATOR_PATHS_ENV}={value!r}: expected 1 (an accelerator's paths) or 0 (the CPU's)")
    return value == "1"


def block_outputs(module: Any, params: Any, *args: Any) -> dict[str, Any]:
    """{name: output} of the submodules of a flax `module` named block_i, encoder_i or decoder_i,
    from one apply(params, *args) with flax's captured intermediates (Model.coordinates)."""
    def is_block(name: str | None) -> bool:
        kind, _, index = (name or "").rpartition("_")
        return kind in ("block", "encoder", "decoder") and index.isdigit()

    _, state = module.apply({"params": params}, *args, mutable=["intermediates"],
                            capture_intermediates=lambda mdl, method: method == "__call__" and is_block(mdl.name))
    return {name: value["__call__"][0] for name, value in state["intermediates"].items() if "__call__" in value}


def row_ids(batch: Batch) -> Any:
    """batch[ROW_IDS], or the rows' own order 0..B-1 when the batch is the whole step's (a model
    called outside the engine)."""
    if ROW_IDS in batch:
        return batch[ROW_IDS]
    import jax.numpy as jnp  # models import jax anyway; this module's config code does not need it

    return jnp.arange(next(iter(batch.values())).shape[0], dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class BatchField:
    """One array the jitted steps read: numpy dtype and logical axes (first: axes.BATCH; an
    axes.LENGTH axis has the row length)."""

    dtype: Any
    axes: tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class ItemCodesRequest:
    """The semantic IDs a model is built on, as its config asks for them (a family's
    item_codes_request); semantic_ids/trial_codes.py makes or reads them. `keys` names the
    config keys of each field, for messages (e.g. {"levels": "model.ids_levels"})."""

    path: str  # an artefact, or FILE.json / DATASET:FILE.json of given IDs; "" = build them
    method: str
    levels: int
    codebook: int
    source: str
    seed: int
    collision_code: bool
    keys: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def key(self, field: str) -> str:
        return self.keys.get(field, field)


@dataclasses.dataclass(frozen=True, eq=False)
class ItemCodes:
    """Finished semantic IDs: (num_items, levels [+ 1]) int32 codes in dense-item order (row
    i - 1 = dense item i) and how they were made (recorded in result.json)."""

    codes: np.ndarray
    provenance: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class FamilyConfig(Section):
    """Base of every family's model config (the `model` section of a trial).

    Trial ids hash `family`, ID_FIELDS, other fields when not at their defaults (see Section), and
    ID_LEGACY: keys the 2026-12-01 flat model config had and this family lacks, with their
    defaults then. A config that set such a key (ModelConfig(family="hstu", ffn_dim=64), or an
    old config.json) keeps its value in legacy_values: unused by the model (checked by the old
    rule), hashed and written back under its old name, so its id stays what it was. A family new since then
    has no ID_FIELDS and no ID_LEGACY.
    """

    SECTION: ClassVar[str] = "model"
    ID_LEGACY: ClassVar[Mapping[str, Any]] = {}

    family: str = ""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    parametrization: Literal["standard", "mup"] = "standard"  # models/core/parametrization.py
    base_width: int = positive(64)  # the d_model at which µP equals the standard model
    legacy_values: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        tag = next(f.default for f in dataclasses.fields(self) if f.name == "family")
        if self.family != tag:
            raise ConfigError(f"model.family={self.family!r} in a {type(self).__name__}; "
                              f"build the section with ModelConfig(family=...)")
        super().__post_init__()
        if self.parametrization == "mup" and not hasattr(self, "d_model"):
            raise ConfigError(f"model.parametrization='mup': model.family={self.family!r} has no d_model to scale")
        for key, value in self.legacy_values:  # by the rules of the family whose field it is
            owner = _owner_of(key)
            field = next(f for f in dataclasses.fields(owner) if f.name == key)
            coerce(value, typing.get_type_hints(owner)[key], f"model.{key}")
            check_value(field, value, f"model.{key}")

    def to_dict(self) -> dict[str, Any]:
        """The section as config.json holds it: its fields, and legacy values under their old names."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "legacy_values"}
        return {**dict(self.legacy_values), **fields}

    def canonical(self) -> dict[str, Any]:
        """The model section as the trial id hashes it."""
        own = {k: v for k, v in super().canonical().items() if k != "legacy_values"}
        return {**self.ID_LEGACY, **dict(self.legacy_values), **own, "family": self.family}


class Model(abc.ABC):
    """A built model: pure functions of (params, batch[, rng]); nothing is stored between calls."""

    @abc.abstractmethod
    def init(self, rng: Any, batch: Batch) -> Any:
        """Parameters boxed with their logical axis names (nn.LogicallyPartitioned leaves)."""

    @abc.abstractmethod
    def loss_sums(self, params: Any, batch: Batch, rng: Any) -> tuple[Any, Any, dict]:
        """(sum of per-position losses, number of positions, aux) of one (micro-)batch in training
        mode. aux = {"losses": {name: scalar}, "metrics": {name: scalar}}: each loss term is a
        per-position mean added to the objective; metrics are only logged.

        batch[ROW_IDS] numbers the rows within the step's whole batch. Random draws (dropout,
        negatives) must be made per row from fold_in(rng, row id) (models.core.layers.row_keys), and
        aux terms must be means over the same positions that are counted, so that a step gives the
        same numbers however its rows are split over devices and micro-batches."""

    def step_inputs(self, batch: Batch, rng: Any) -> dict[str, Any]:
        """Arrays drawn from the step's whole batch (e.g. in-batch negatives), made once before the
        batch is split over micro-batches; loss_sums finds them in batch[STEP_INPUTS]."""
        return {}

    def touched_rows(self, batch: Batch, rng: Any) -> dict[str, Any]:
        """For sparse table updates (train.table_optimizer): {name: ids} for every top-level
        catalogue table (logical axis axes.TABLE_ROWS), ids (any shape) holding every row that
        loss_sums(params, batch, rng) reads; loss_sums must then accept a models.core.tables.RowSubset
        of those rows in place of the table (models.core.tables.take_rows reads either)."""
        raise NotImplementedError(f"{type(self).__name__} does not update its tables sparsely")

    @abc.abstractmethod
    def evaluate(self, params: Any, batch: Batch) -> dict:
        """Per row: "valid" (bool) and either "rank" (the target's 1-based rank among all items,
        history excluded) or "top_k" (item ids, best first) with "target"; optionally "loss"."""

    @abc.abstractmethod
    def step_counts(self, batch: Batch) -> dict[str, Any]:
        """Scalars the train step returns for FLOP and data accounting; "tokens" is required."""

    def coordinates(self, params: Any, batch: Batch) -> dict[str, Any]:
        """{layer name: (..., width) activations} of the layers a µP coordinate check follows
        (scaling/coord_check.py), in evaluation mode on a training batch."""
        raise NotImplementedError(f"{type(self).__name__} does not report its activations")

    def top_items(self, params: Any, batch: Batch, k: int) -> dict[str, Any]:
        """Serving: per eval-batch row, "items" (B, k) the k best dense item ids, best first, none
        of the row's history, and their "scores" (B, k) (the family's own scale)."""
        raise NotImplementedError(f"{type(self).__name__} does not serve top-k items")

    def provenance(self) -> dict[str, Any]:
        """What the model was built from besides its config (e.g. its semantic IDs), for result.json."""
        return {}


class Family(abc.ABC):
    """One model family; subclasses set `name` and `config_class` and are registered once."""

    name: ClassVar[str]
    config_class: ClassVar[type[FamilyConfig]]

    @abc.abstractmethod
    def build(self, config: Any, train: Any, num_items: int) -> Model:
        """The model for `config` trained with `train` (scaling.config.TrainConfig) on num_items items."""

    def item_codes_request(self, config: Any) -> ItemCodesRequest | None:
        """The semantic IDs this family's model is built on, or None when it needs none. The
        semantic_ids/ stage makes them from the trial's data before the model is built."""
        return None

    def build_for(self, config: Any, train: Any, num_items: int, item_codes: ItemCodes | None = None) -> Model:
        """The model for a trial, on the codes its item_codes_request asked for (None: a family
        that needs none, or shapes without data); by default `build`."""
        return self.build(config, train, num_items)

    @abc.abstractmethod
    def train_fields(self, config: Any) -> Mapping[str, BatchField]:
        """The fields of a training batch the jitted train step reads."""

    @abc.abstractmethod
    def eval_fields(self, config: Any) -> Mapping[str, BatchField]:
        """The fields of an evaluation batch the jitted eval step reads."""

    @abc.abstractmethod
    def model_flops(self, config: Any, train: Any, counts: Mapping[str, float], num_items: int) -> float:
        """Training model FLOPs of one step from its step counts (the convention of scaling/engine/flops.py)."""

    @abc.abstractmethod
    def param_counts(self, config: Any, num_items: int) -> dict[str, int]:
        """{"params", "params_non_embedding", "params_active"} analytically."""

    def full_row_counts(self, config: Any, rows: int, row_len: int) -> dict[str, float]:
        """Step counts of a batch of full rows (one user of row_len items each): sweep planning.
        The base gives the counts every pipeline row has; families add their own."""
        return {"tokens": float(rows * row_len), "positions": float(rows * (row_len - 1))}

    def executed_flops(self, config: Any, train: Any, rows: int, row_len: int, num_items: int) -> float | None:
        """Matmul FLOPs the compiled train step executes on (rows, row_len); None if not counted."""
        return None

    def device_batch(self, config: Any, batch: Batch, fields: Mapping[str, BatchField], xp: Any = np
                     ) -> dict[str, Any]:
        """The arrays of `fields` from a pipeline batch, in their device dtypes: host numpy arrays,
        or with xp=jax.numpy traced ones (the exported serving function builds its batch so)."""
        return {name: xp.asarray(batch[name], field.dtype) for name, field in fields.items()}

    def example_batch(self, config: Any, rows: int, row_len: int, fields: Mapping[str, BatchField] | None = None
                      ) -> dict[str, np.ndarray]:
        """Zeros shaped like a batch of `rows` rows of row_len tokens (train fields by default)."""
        fields = self.train_fields(config) if fields is None else fields
        shape = lambda field: tuple(row_len if a == axes.LENGTH else rows for a in field.axes)
        return {name: np.zeros(shape(field), field.dtype) for name, field in fields.items()}

    def check_trial(self, config: Any, data: Any, train: Any) -> None:
        """Rules across the model, data and train sections; raise ConfigError naming the keys."""

    def check_data(self, config: Any, train: Any, num_items: int) -> None:
        """Rules that need the catalogue size, checked before anything compiles."""

    def scores_bytes_per_row(self, config: Any, row_len: int) -> float:
        """Bytes of the largest per-row activation (attention scores): the CPU micro-batching
        keeps a micro-batch's worth of them cache-sized. 0 when nothing is quadratic."""
        return 0.0

    def item_table(self, config: Any, params: Any) -> Any:
        """(num_items, d) learned item vectors of trained params, row i - 1 for dense item i (the
        source `checkpoint:WORKDIR` of semantic IDs); None when the family learns none."""
        return None

    def summary(self, config: Any) -> dict[str, Any]:
        """Size fields recorded with every result (d_model, blocks, heads when the family has them)."""
        names = ("d_model", "blocks", "heads")
        return {name: getattr(config, name) for name in names if hasattr(config, name)}


_FAMILIES: dict[str, Family] = {}
_plugins_loaded = False


def register(family: Family) -> Family:
    """Add a family; a second family under one name is an error (re-registering the same class is not)."""
    known = _FAMILIES.get(family.name)
    where = lambda f: (type(f).__module__, type(f).__qualname__)
    if known is not None and where(known) != where(family):
        raise ValueError(f"model family {family.name!r} is already registered by {type(known).__module__}")
    _FAMILIES[family.name] = family
    return family


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ConfigError(f"${PLUGINS_ENV}: cannot import {module!r}: {error}") from None


def _owner_of(key: str) -> type[FamilyConfig]:
    """The registered config class that has `key` among the fields it has hashed since 2026-12-01."""
    for name in BUILTIN_MODULES:  # only the families of that date hashed such fields
        get(name)
    return next(f.config_class for f in _FAMILIES.values() if key in f.config_class.ID_FIELDS)


def names() -> list[str]:
    """Every family's name; the built-in families' modules stay unimported until one is used."""
    _load_plugins()
    return sorted({*BUILTIN_MODULES, *_FAMILIES})


def get(name: str) -> Family:
    """The registered family called `name` (importing its module on first use); ConfigError
    naming model.family otherwise."""
    if name not in _FAMILIES and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _FAMILIES:
        _load_plugins()
    if name not in _FAMILIES:
        raise ConfigError(f"model.family={name!r}; known: {', '.join(names())}")
    return _FAMILIES[name]


def of(config: FamilyConfig) -> Family:
    """The family of a model config."""
    return get(config.family)


DEFAULT_FAMILY = "hstu"  # the family of a model section that names none (configs before the registry)


def model_config(values: Mapping[str, Any], droppable: frozenset[str] | set[str] = frozenset()) -> FamilyConfig:
    """The model section from a JSON object, its class chosen by values["family"] (a tagged union).

    A key this family lacks is kept in legacy_values when it is one of the 2026-12-01 flat
    config's keys (FamilyConfig.ID_LEGACY) set to another value than its old default, ignored at
    that default, and dropped when it is in `droppable` (a base config's keys after an override
    switched the family); any other key is an error naming it.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"model must be an object, got {values!r}")
    name = values.get("family", DEFAULT_FAMILY)
    if not isinstance(name, str):
        raise ConfigError(f"model.family={name!r} is not a string")
    cls = get(name).config_class
    fields = {f.name for f in dataclasses.fields(cls)}
    fields.discard("legacy_values")
    kept, legacy = {}, {}
    for key, value in values.items():
        if key in fields:
            kept[key] = value
        elif key in cls.ID_LEGACY:
            value = coerce(value, type(cls.ID_LEGACY[key]), f"model.{key}")
            if value != cls.ID_LEGACY[key]:
                legacy[key] = value
        elif key not in droppable:
            raise ConfigError(f"unknown config key model.{key} for model.family={name!r}; "
                              f"known: {', '.join(sorted(fields))}")
    config = build_section(cls, {"family": name, **kept}, "model.")
    return dataclasses.replace(config, legacy_values=tuple(sorted(legacy.items()))) if legacy else config
