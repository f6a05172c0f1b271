"""Everything a run compiles for one mesh: sharded init, train step, eval step."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models.core import axes, family as families, parametrization
from models.core.family import BatchField, Family
from scaling.config import ConfigError, TrainConfig, TrialConfig
from scaling.engine import mup
from scaling.engine.batches import to_global
from scaling.engine.mesh import LOGICAL_AXIS_RULES, batch_sharding
from scaling.engine.shardings import state_shardings
from scaling.engine.step_functions import StepFunctions, boxed_params, make_optimizer


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Jitted functions with explicit shardings; call them inside `trainer.context()`. `config` is
    the trial's as given; `grad_accum` its micro-batches per step, resolved (auto_grad_accum)."""

    config: TrialConfig
    grad_accum: int
    mesh: Mesh
    num_items: int
    family: Family
    functions: StepFunctions
    boxed_params: Any  # abstract parameters boxed with logical names
    abstract_state: Any
    shardings: Any
    init: Callable[[jax.Array], Any]
    train_step: Callable[[Any, dict, jax.Array], tuple[Any, dict]]
    eval_step: Callable[[Any, dict], dict]

    def context(self):
        """The mesh and logical-axis rules the jitted functions trace under."""
        return _Context(self.mesh)

    @property
    def param_count(self) -> int:
        """Parameters of the model; a catalogue table's padding rows (models/core/tables.py) are not."""
        def size(leaf: Any) -> int:
            shape = leaf.value.shape
            if leaf.names and leaf.names[0] == axes.TABLE_ROWS:
                shape = (self.num_items + 1, *shape[1:])
            return math.prod(shape)
        boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
        return sum(size(leaf) if boxed(leaf) else math.prod(leaf.shape)
                   for leaf in jax.tree.leaves(self.boxed_params, is_leaf=boxed))

    def _global(self, batch: dict, fields: dict[str, BatchField]) -> dict[str, jax.Array]:
        return to_global(self.family.device_batch(self.config.model, batch, fields), self.mesh)

    def train_batch(self, batch: dict) -> dict[str, jax.Array]:
        """This process's rows of a host training batch as global arrays for train_step."""
        return self._global(batch, self.family.train_fields(self.config.model))

    def eval_batch(self, batch: dict) -> dict[str, jax.Array]:
        """This process's rows of a host evaluation batch as global arrays for eval_step."""
        return self._global(batch, self.family.eval_fields(self.config.model))


class _Context:
    def __init__(self, mesh: Mesh):
        self.mesh_context = jax.set_mesh(mesh)
        self.rules_context = nn.logical_axis_rules(LOGICAL_AXIS_RULES)

    def __enter__(self):
        self.mesh_context.__enter__()
        self.rules_context.__enter__()
        return self

    def __exit__(self, *exc):
        self.rules_context.__exit__(*exc)
        return self.mesh_context.__exit__(*exc)


CPU_SCORES_BYTES = 4 << 20  # one micro-batch's (rows, heads, L, L) fp32 attention scores per device


def _splits_evenly(rows: int, batch_split: int) -> bool:
    return rows % batch_split == 0 and rows % jax.process_count() == 0


def auto_grad_accum(config: TrialConfig, mesh: Mesh) -> int:
    """Micro-batches per step when train.grad_accum = 0: 1 on accelerators (and on a CPU running
    their paths, models.core.family.accelerator_paths); on a CPU the fewest whose attention scores stay
    cache-sized (CPU_SCORES_BYTES). Each elementwise pass over the (rows, heads, L, L) tensors then
    stays in cache instead of streaming from memory; measured on this 2-core CPU, the
    hstu-large-ml1m step at batch 128 went from 1.6 s to 0.92 s."""
    if config.train.grad_accum:
        return config.train.grad_accum
    if mesh.devices.flat[0].platform != "cpu" or families.accelerator_paths():
        return 1
    batch, batch_split = config.train.batch_size, mesh.shape["data"] * mesh.shape["fsdp"]
    valid = [m for m in range(1, batch + 1) if batch % m == 0 and _splits_evenly(batch // m, batch_split)]
    if not valid:
        return 1  # check_batch_fits_mesh names the problem
    scores_per_row = families.of(config.model).scores_bytes_per_row(config.model, config.data.row_len)
    for micro in valid:
        if batch // micro // batch_split * scores_per_row <= CPU_SCORES_BYTES:
            return micro
    return valid[-1]


def check_batch_fits_mesh(train: TrainConfig, mesh: Mesh) -> None:
    """Micro-batches and evaluation batches split evenly over data x fsdp and the processes."""
    batch_split = mesh.shape["data"] * mesh.shape["fsdp"]
    for name, rows in (("train.batch_size / train.grad_accum", train.batch_size // train.grad_accum),
                       ("train.eval_batch_size", train.eval_batch_size)):
        if not _splits_evenly(rows, batch_split):
            raise ConfigError(f"{name} = {rows} rows do not split over data x fsdp = {batch_split} "
                              f"and {jax.process_count()} processes")


def sparse_tables(config: TrialConfig, boxed: Any, model: Any) -> tuple[str, ...]:
    """The top-level catalogue tables (logical axis axes.TABLE_ROWS) train.table_optimizer updates
    sparsely; () for dense AdamW. A family that has none, or cannot say which rows a step
    touches, is a ConfigError naming the key."""
    if config.train.table_optimizer == "adam":
        return ()
    key = f"train.table_optimizer={config.train.table_optimizer!r}"
    names = tuple(name for name, leaf in boxed.items()
                  if isinstance(leaf, nn.LogicallyPartitioned) and leaf.names[:1] == (axes.TABLE_ROWS,))
    if not names:
        raise ConfigError(f"{key}: model.family={config.model.family!r} has no catalogue table to update sparsely")
    if type(model).touched_rows is families.Model.touched_rows:
        raise ConfigError(f"{key}: model.family={config.model.family!r} cannot say which rows a step touches "
                          f"(Model.touched_rows)")
    return names


def trial_model(config: TrialConfig, num_items: int, prepared: Any = None,
                log: Callable[[str], None] | None = None) -> families.Model:
    """The family's model for a trial. A family that asks for semantic IDs gets them from the
    semantic_ids/ stage first, made from `prepared` (the trial's data.dataset.PreparedData);
    without data, the family builds on its own (shapes, benchmarks)."""
    family = families.of(config.model)
    request = family.item_codes_request(config.model) if prepared is not None else None
    if request is None:
        return family.build_for(config.model, config.train, num_items)
    from scaling.engine import trained_table  # imported with the stage: a trial without IDs loads neither
    from semantic_ids.trial_codes import item_codes

    codes = item_codes(request, prepared, log, trained_table.read)
    return family.build_for(config.model, config.train, num_items, codes)


def build_trainer(config: TrialConfig, num_items: int, mesh: Mesh, total_steps: int, prepared: Any = None,
                  log: Callable[[str], None] | None = None) -> Trainer:
    """The jitted functions for `config` on `mesh` (train.grad_accum = 0 resolved to the trainer's
    grad_accum). prepared: the trial's data, for families that build from more than the catalogue size."""
    train = dataclasses.replace(config.train, grad_accum=auto_grad_accum(config, mesh))
    check_batch_fits_mesh(train, mesh)
    family = families.of(config.model)
    family.check_data(config.model, config.train, num_items)
    model = trial_model(config, num_items, prepared, log)
    example = family.example_batch(config.model, 1, config.data.row_len)
    replicated = NamedSharding(mesh, PartitionSpec())
    with _Context(mesh):
        boxed = jax.eval_shape(functools.partial(boxed_params, model), jax.random.key(0), example)
    tables = sparse_tables(config, boxed, model)
    multipliers = None
    if parametrization.is_mup(config.model):  # µP: per-kind learning rates of the densely updated parameters
        dense = {name: value for name, value in boxed.items() if name not in tables}
        multipliers = mup.learning_rate_multipliers(dense, parametrization.width_multiplier(config.model))
    optimizer = make_optimizer(train, total_steps, multipliers)
    functions = StepFunctions(model, optimizer, train, tables, total_steps)
    with _Context(mesh):
        abstract_state = jax.eval_shape(functions.init_state, jax.random.key(0), example)
    shardings = state_shardings(abstract_state, boxed, mesh)
    train_batch = {name: batch_sharding(mesh, len(field.axes)) for name, field in family.train_fields(config.model).items()}
    eval_batch = {name: batch_sharding(mesh, len(field.axes)) for name, field in family.eval_fields(config.model).items()}
    init = jax.jit(lambda rng: functions.init_state(rng, example), out_shardings=shardings)
    train_step = jax.jit(functions.train_step, in_shardings=(shardings, train_batch, replicated),
                         out_shardings=(shardings, replicated), donate_argnums=(0,))
    eval_step = jax.jit(functions.eval_step, in_shardings=(shardings["params"], eval_batch), out_shardings=replicated)
    return Trainer(config, train.grad_accum, mesh, num_items, family, functions, boxed, abstract_state, shardings, init,
                   train_step, eval_step)
