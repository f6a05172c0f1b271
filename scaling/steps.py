"""The jitted pieces of training: state init, the train step, the eval step. No I/O here.

TrainState = {"params", "opt_state", "step"}; the step's PRNG key is fold_in(seed key, step), so a
resumed run draws exactly the numbers an uninterrupted one would; within a step, row r draws from
fold_in(step key, r) (models.family.ROW_IDS), so any mesh or micro-batching draws the same.
The model is a family's Model (models/family.py): these functions know nothing of what it computes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from models.family import ROW_IDS, Model
from scaling.config import TrainConfig

TrainState = dict[str, Any]
Batch = dict[str, jax.Array]


def make_optimizer(train: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with a constant rate, or linear warm-up then cosine decay to 0."""
    if train.schedule == "cosine":
        rate = optax.warmup_cosine_decay_schedule(0.0, train.learning_rate, max(train.warmup_steps, 0),
                                                  max(total_steps, train.warmup_steps + 1))
    elif train.warmup_steps > 0:
        rate = optax.linear_schedule(0.0, train.learning_rate, train.warmup_steps)
    else:
        rate = train.learning_rate
    return optax.adamw(rate, b1=train.beta1, b2=train.beta2, eps=train.eps, weight_decay=train.weight_decay)


def boxed_params(model: Model, rng: jax.Array, example: Batch) -> Any:
    """Parameters still boxed with their logical axis names (use under jax.eval_shape)."""
    return model.init(rng, example)


def init_state(model: Model, optimizer: optax.GradientTransformation, rng: jax.Array, example: Batch) -> TrainState:
    """Fresh parameters (plain arrays) and optimizer state."""
    params = nn.unbox(boxed_params(model, rng, example))
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """Pure functions of (state, batch[, rng]) for one model and training configuration."""

    model: Model
    optimizer: optax.GradientTransformation
    train: TrainConfig

    def gradients(self, params: Any, batch: Batch, rng: jax.Array) -> tuple[Any, jax.Array, jax.Array, dict]:
        """Gradient of the mean loss over all supervised positions of the batch plus the aux
        loss terms (accumulated over train.grad_accum micro-batches), with the loss sum, the
        position count and the aux losses and metrics (position-weighted means)."""
        def objective(p, b, r):
            loss_sum, count, aux = self.model.loss_sums(p, b, r)
            # aux terms are per-position means: weighted by count here, they are means after the 1/count below
            weighted = {group: {k: v * count for k, v in aux[group].items()} for group in ("losses", "metrics")}
            total = loss_sum + sum(weighted["losses"].values()) if aux["losses"] else loss_sum
            return total, (loss_sum, count, weighted)

        grad_of_sum = jax.grad(objective, has_aux=True)
        micro = self.train.grad_accum
        # Rows are numbered before any split; the model draws each row's randomness from its number
        # and the one step key, so devices and micro-batches change only the order of the sums.
        batch = {**batch, ROW_IDS: jnp.arange(jax.tree.leaves(batch)[0].shape[0], dtype=jnp.int32)}
        if micro == 1:
            grads, (loss_sum, count, weighted) = grad_of_sum(params, batch, rng)
        else:
            # Micro-batch i takes rows i, i + micro, ...: every device keeps its own rows.
            split = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // micro, micro, *x.shape[1:]), 0, 1), batch)

            def body(carry, micro_batch):
                grads, aux = grad_of_sum(params, micro_batch, rng)
                return jax.tree.map(jnp.add, carry, (grads, aux)), None

            zeros = jax.eval_shape(grad_of_sum, params, jax.tree.map(lambda x: x[0], split), rng)
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), zeros)
            (grads, (loss_sum, count, weighted)), _ = jax.lax.scan(body, zeros, split)
        scale = 1.0 / jnp.maximum(count, 1.0)
        aux = jax.tree.map(lambda v: v * scale, weighted)
        return jax.tree.map(lambda g: g * scale, grads), loss_sum, count, aux

    def train_step(self, state: TrainState, batch: Batch, seed_key: jax.Array) -> tuple[TrainState, dict]:
        params = state["params"]
        rng = jax.random.fold_in(seed_key, state["step"])
        grads, loss_sum, count, aux = self.gradients(params, batch, rng)
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], params)
        new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": state["step"] + 1}
        counts = {**self.model.step_counts(batch), "positions": count}
        metrics = {"loss_sum": loss_sum, "positions": count, "grad_norm": optax.tree.norm(grads), "counts": counts,
                   "aux": {**aux["losses"], **aux["metrics"]}}
        return new_state, metrics

    def eval_step(self, params: Any, batch: Batch) -> dict:
        """The family's per-row evaluation (ranks, or top-K lists) of one batch."""
        return self.model.evaluate(params, batch)
