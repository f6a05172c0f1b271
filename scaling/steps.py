"""The jitted pieces of training: state init, the train step, the eval step. No I/O here.

TrainState = {"params", "opt_state", "step"}; the step's PRNG key is fold_in(seed key, step), so a
resumed run draws exactly the numbers an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from models.decoder import MODEL_INPUTS, SequentialRecommender
from models.layers import l2_normalize
from models.losses import full_softmax_loss, sample_negatives, sampled_softmax_loss
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


def boxed_params(model: nn.Module, rng: jax.Array, example: Batch) -> Any:
    """Parameters still boxed with their logical axis names (use under jax.eval_shape)."""
    return model.init({"params": rng}, {k: example[k] for k in MODEL_INPUTS})["params"]


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jax.Array, example: Batch) -> TrainState:
    """Fresh parameters (plain arrays) and optimizer state."""
    params = nn.unbox(boxed_params(model, rng, example))
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """Pure functions of (state, batch[, rng]) for one model and training configuration."""

    model: SequentialRecommender
    optimizer: optax.GradientTransformation
    train: TrainConfig
    num_items: int

    def loss_sums(self, params: Any, batch: Batch, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(sum of per-position losses, supervised positions) of one (micro)batch, with dropout."""
        dropout_rng, negatives_rng = jax.random.split(rng)
        outputs = self.model.apply({"params": params}, {k: batch[k] for k in MODEL_INPUTS},
                                   deterministic=False, rngs={"dropout": dropout_rng})
        candidates = l2_normalize(params["item_embedding"])
        targets = batch["targets"]
        if self.train.loss == "full_softmax":
            return full_softmax_loss(outputs, targets, candidates, self.train.temperature)
        negatives = sample_negatives(negatives_rng, targets.shape, self.train.negatives, self.num_items)
        return sampled_softmax_loss(outputs, targets, candidates, negatives, self.train.temperature)

    def gradients(self, params: Any, batch: Batch, rng: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        """Gradient of the mean loss over all supervised positions of the batch (accumulated over
        train.grad_accum microbatches), with the loss sum and position count."""
        def summed(p, b, r):
            loss_sum, count = self.loss_sums(p, b, r)
            return loss_sum, count

        grad_of_sum = jax.value_and_grad(summed, has_aux=True)
        micro = self.train.grad_accum
        if micro == 1:
            (loss_sum, count), grads = grad_of_sum(params, batch, rng)
        else:
            # Micro-batch i takes rows i, i + micro, ...: every device keeps its own rows.
            split = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // micro, micro, *x.shape[1:]), 0, 1), batch)

            def body(carry, xs):
                grads_acc, loss_acc, count_acc = carry
                index, micro_batch = xs
                (loss_sum, count), grads = grad_of_sum(params, micro_batch, jax.random.fold_in(rng, index))
                return (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss_sum, count_acc + count), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, loss_sum, count), _ = jax.lax.scan(body, (zeros, 0.0, 0.0), (jnp.arange(micro), split))
        scale = 1.0 / jnp.maximum(count, 1.0)
        return jax.tree.map(lambda g: g * scale, grads), loss_sum, count

    def train_step(self, state: TrainState, batch: Batch, seed_key: jax.Array) -> tuple[TrainState, dict]:
        params = state["params"]
        rng = jax.random.fold_in(seed_key, state["step"])
        grads, loss_sum, count = self.gradients(params, batch, rng)
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], params)
        new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state, "step": state["step"] + 1}
        real = batch["segment_ids"] > 0
        # sum over segments of n^2 = sum over their tokens of (2 p + 1), p the position in the segment
        squared_lengths = jnp.sum(jnp.where(real, 2 * batch["positions"] + 1, 0).astype(jnp.float32))
        metrics = {"loss_sum": loss_sum, "positions": count, "grad_norm": optax.tree.norm(grads),
                   "tokens": jnp.sum(real).astype(jnp.float32), "squared_lengths": squared_lengths}
        return new_state, metrics

    def eval_step(self, params: Any, batch: Batch) -> dict:
        """Per row: the target's full-ranking rank (history excluded, target never) and its
        full-softmax loss, for rows with eval_valid."""
        outputs = self.model.apply({"params": params}, {k: batch[k] for k in MODEL_INPUTS}, deterministic=True)
        query = jnp.take_along_axis(outputs, batch["eval_position"][:, None, None], axis=1)[:, 0]
        candidates = l2_normalize(params["item_embedding"]).astype(jnp.float32)
        scores = query @ candidates.T  # (B, V + 1)
        target = batch["eval_target"]
        target_score = jnp.take_along_axis(scores, target[:, None], axis=1)[:, 0]
        rows = jnp.arange(scores.shape[0])[:, None]
        history = jnp.where(batch["items"] == target[:, None], 0, batch["items"])
        excluded = jnp.zeros(scores.shape, bool).at[rows, history].set(True).at[:, 0].set(True)
        higher = jnp.sum((scores > target_score[:, None]) & ~excluded, axis=1)
        logits = jnp.where(jnp.arange(scores.shape[1]) == 0, -jnp.inf, scores / self.train.temperature)
        loss = jax.nn.logsumexp(logits, axis=1) - target_score / self.train.temperature
        return {"rank": 1 + higher, "loss": loss, "valid": batch["eval_valid"]}
