"""The jitted pieces of training: state init, the train step, the eval step. No I/O here.

TrainState = {"params", "opt_state", "step"}; the step's PRNG key is fold_in(seed key, step), so a
resumed run draws exactly the numbers an uninterrupted one would; within a step, row r draws from
fold_in(step key, r) (models.core.family.ROW_IDS), so any mesh or micro-batching draws the same, and
draws over the whole step (Model.step_inputs) are made once, before the batch is split.
The model is a family's Model (models/core/family.py): these functions know nothing of what it computes.

With train.table_optimizer lazy_adam or rowwise_adagrad, the catalogue tables (`tables`) are
updated sparsely: the rows the step touches (Model.touched_rows) are gathered once, the loss is
differentiated with respect to them only, and scaling/engine/table_optimizers.py writes them back;
opt_state is then {"dense": AdamW's state of the other parameters, "tables": {"mu": {name: ...}, ...}}
(each statistic's path ends with its table's, so it is laid out like the table).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from models.core import tables as catalogue
from models.core.family import ROW_IDS, STEP_INPUTS, Model
from scaling.config import TrainConfig
from scaling.engine import mup, table_optimizers

TrainState = dict[str, Any]
Batch = dict[str, jax.Array]
OPTIMIZER_SCOPE = "optimizer"  # jax.named_scope of the parameter update (profiles are attributed by it)


def learning_rate(train: TrainConfig, total_steps: int, peak: float) -> optax.ScalarOrSchedule:
    """A constant rate (after a linear warm-up, if any), linear warm-up then cosine decay to 0, or
    T5's and TIGER's inverse square root: `peak` for the first warmup_steps steps, then
    peak * sqrt(warmup_steps / step) (train.schedule)."""
    if train.schedule == "rsqrt":
        warmup = float(max(train.warmup_steps, 1))
        return lambda step: peak * jnp.sqrt(warmup / jnp.maximum(jnp.asarray(step, jnp.float32), warmup))
    if train.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, max(train.warmup_steps, 0),
                                                  max(total_steps, train.warmup_steps + 1))
    if train.warmup_steps > 0:
        return optax.linear_schedule(0.0, peak, train.warmup_steps)
    return peak


def make_optimizer(train: TrainConfig, total_steps: int, multipliers: Any = None) -> optax.GradientTransformation:
    """AdamW with a constant rate, or linear warm-up then cosine decay to 0; with `multipliers`
    (a tree like the parameters, scaling/engine/mup.py), each parameter's update scaled by its own."""
    rate = learning_rate(train, total_steps, train.learning_rate)
    adamw = optax.adamw(rate, b1=train.beta1, b2=train.beta2, eps=train.eps, weight_decay=train.weight_decay)
    return adamw if multipliers is None else optax.chain(adamw, mup.scale_updates(multipliers))


def boxed_params(model: Model, rng: jax.Array, example: Batch) -> Any:
    """Parameters still boxed with their logical axis names (use under jax.eval_shape)."""
    return model.init(rng, example)


def with_row_ids(batch: Batch) -> Batch:
    """The batch with ROW_IDS: rows numbered before any split, so that the model draws each row's
    randomness from its number and the one step key, and devices and micro-batches change only
    the order of the sums."""
    if ROW_IDS in batch:
        return batch
    return {**batch, ROW_IDS: jnp.arange(jax.tree.leaves(batch)[0].shape[0], dtype=jnp.int32)}


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """Pure functions of (state, batch[, rng]) for one model and training configuration.
    tables: the top-level parameters updated sparsely by train.table_optimizer (none: dense AdamW
    on everything); total_steps: for the learning-rate schedule of those tables."""

    model: Model
    optimizer: optax.GradientTransformation
    train: TrainConfig
    tables: tuple[str, ...] = ()
    total_steps: int = 1

    def init_state(self, rng: jax.Array, example: Batch) -> TrainState:
        """Fresh parameters (plain arrays) and optimizer state."""
        params = nn.unbox(boxed_params(self.model, rng, example))
        if not self.tables:
            opt_state = self.optimizer.init(params)
        else:
            dense, tables = self._split(params)
            states = {name: table_optimizers.init(self.train.table_optimizer, table) for name, table in tables.items()}
            # {"mu": {name: ...}, ...}: each moment's path ends with its table's, so it is laid out like it
            opt_state = {"dense": self.optimizer.init(dense),
                         "tables": {key: {name: states[name][key] for name in states} for key in next(iter(states.values()))}}
        return {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}

    def _split(self, params: Any) -> tuple[dict, dict]:
        """(the densely updated parameters, the sparsely updated tables)."""
        return ({k: v for k, v in params.items() if k not in self.tables},
                {k: v for k, v in params.items() if k in self.tables})

    def gradients(self, params: Any, batch: Batch, rng: jax.Array, shared: dict | None = None
                  ) -> tuple[Any, jax.Array, jax.Array, dict]:
        """Gradient of the mean loss over all supervised positions of the batch plus the aux
        loss terms (accumulated over train.grad_accum micro-batches), with the loss sum, the
        position count and the aux losses and metrics (position-weighted means). With sparse
        tables, `params` holds a models.core.tables.RowSubset in place of each, and the gradient of
        a table is that of its subset's rows. shared: Model.step_inputs of the batch, if made."""
        subsets = {name: value for name, value in params.items() if isinstance(value, catalogue.RowSubset)}

        def objective(p, b, r):
            p = {**p, **{name: dataclasses.replace(subset, rows=p[name]) for name, subset in subsets.items()}}
            loss_sum, count, aux = self.model.loss_sums(p, b, r)
            # aux terms are per-position means: weighted by count here, they are means after the 1/count below
            weighted = {group: {k: v * count for k, v in aux[group].items()} for group in ("losses", "metrics")}
            total = loss_sum + sum(weighted["losses"].values()) if aux["losses"] else loss_sum
            return total, (loss_sum, count, weighted)

        params = {**params, **{name: subset.rows for name, subset in subsets.items()}}
        grad_of_sum = jax.grad(objective, has_aux=True)
        micro = self.train.grad_accum
        batch = with_row_ids(batch)
        if shared is None:
            shared = self.model.step_inputs(batch, rng)  # draws over the whole step: every micro-batch sees them
        if micro == 1:
            grads, (loss_sum, count, weighted) = grad_of_sum(params, {**batch, STEP_INPUTS: shared}, rng)
        else:
            # Micro-batch i takes rows i, i + micro, ...: every device keeps its own rows.
            split = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // micro, micro, *x.shape[1:]), 0, 1), batch)

            def body(carry, micro_batch):
                grads, aux = grad_of_sum(params, {**micro_batch, STEP_INPUTS: shared}, rng)
                return jax.tree.map(jnp.add, carry, (grads, aux)), None

            first = {**jax.tree.map(lambda x: x[0], split), STEP_INPUTS: shared}
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(grad_of_sum, params, first, rng))
            (grads, (loss_sum, count, weighted)), _ = jax.lax.scan(body, zeros, split)
        scale = 1.0 / jnp.maximum(count, 1.0)
        aux = jax.tree.map(lambda v: v * scale, weighted)
        return jax.tree.map(lambda g: g * scale, grads), loss_sum, count, aux

    def train_step(self, state: TrainState, batch: Batch, seed_key: jax.Array) -> tuple[TrainState, dict]:
        params = state["params"]
        rng = jax.random.fold_in(seed_key, state["step"])
        if self.tables:
            new_params, opt_state, grads, loss_sum, count, aux = self._sparse_update(state, batch, rng)
        else:
            grads, loss_sum, count, aux = self.gradients(params, batch, rng)
            with jax.named_scope(OPTIMIZER_SCOPE):
                updates, opt_state = self.optimizer.update(grads, state["opt_state"], params)
                new_params = optax.apply_updates(params, updates)
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
        counts = {**self.model.step_counts(batch), "positions": count}
        metrics = {"loss_sum": loss_sum, "positions": count, "grad_norm": optax.tree.norm(grads), "counts": counts,
                   "aux": {**aux["losses"], **aux["metrics"]}}
        return new_state, metrics

    def _sparse_update(self, state: TrainState, batch: Batch, rng: jax.Array) -> tuple:
        """AdamW on the dense parameters, the table optimizer on each table's touched rows.
        Returns (params, opt_state, gradients (tables: their touched rows'), loss sum, count, aux)."""
        params, step = state["params"], state["step"]
        batch = with_row_ids(batch)
        shared = self.model.step_inputs(batch, rng)
        touched_ids = self.model.touched_rows({**batch, STEP_INPUTS: shared}, rng)
        touched = {name: catalogue.gather_rows(params[name], touched_ids[name]) for name in self.tables}
        grads, loss_sum, count, aux = self.gradients({**params, **touched}, batch, rng, shared)
        with jax.named_scope(OPTIMIZER_SCOPE):
            dense, _ = self._split(params)
            dense_grads, table_grads = self._split(grads)
            updates, dense_state = self.optimizer.update(dense_grads, state["opt_state"]["dense"], dense)
            new_params = dict(optax.apply_updates(dense, updates))
            table_rate = self.train.table_learning_rate or self.train.learning_rate
            rate = learning_rate(self.train, self.total_steps, table_rate)
            rate_fn = rate if callable(rate) else (lambda _, value=rate: jnp.asarray(value, jnp.float32))
            table_states = state["opt_state"]["tables"]
            new_states = {key: {} for key in table_states}
            for name in self.tables:
                new_params[name], updated = table_optimizers.update(
                    self.train.table_optimizer, self.train, rate_fn, step, params[name],
                    {key: table_states[key][name] for key in table_states}, touched[name], table_grads[name])
                for key, value in updated.items():
                    new_states[key][name] = value
        return new_params, {"dense": dense_state, "tables": new_states}, grads, loss_sum, count, aux

    def eval_step(self, params: Any, batch: Batch) -> dict:
        """The family's per-row evaluation (ranks, or top-K lists) of one batch."""
        return self.model.evaluate(params, batch)
