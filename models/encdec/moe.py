"""A sparse mixture-of-experts feed-forward (Switch / GShard; OneRec's decoder): a router picks
top_k of E experts per token, each expert a feed-forward of its own.

Tokens are routed in groups (G, N): a group is a fixed set of sequences -- in training one
training row's drawn examples, in evaluation each sequence alone -- so routing never depends on
how rows are spread over devices or micro-batches. Each expert takes at most C tokens of a
group, C = ceil(capacity_factor x N x top_k / E) in training; choices beyond it are dropped (the
token keeps its residual), first choices of every token before second choices (GShard). In
evaluation C = N: nothing is dropped, so a sequence's score depends on nothing but itself.

Dispatch and combine are one-hot einsums (G, N, E, C), which XLA partitions as the expert axis
says (an all-to-all when experts and groups are sharded over the same mesh axis).

Balance loss (Switch, Fedus et al. 2021, eq. 4): E x sum_e f_e P_e per group, f_e the fraction of
the group's (token, choice) assignments routed to e before dropping, P_e the mean router
probability of e, over real tokens; its minimum 1 is a uniform router. Groups are averaged
weighted by their real tokens.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.core import axes
from models.core.layers import logical_param

_XAVIER = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=-2, out_axis=-1)


def capacity(tokens: int, experts: int, top_k: int, capacity_factor: float) -> int:
    """Tokens each expert takes from a group of `tokens` in training."""
    return max(1, min(tokens, math.ceil(capacity_factor * tokens * top_k / experts)))


def route(logits: jax.Array, real: jax.Array, top_k: int, slots: int) -> tuple[jax.Array, jax.Array, dict]:
    """Router logits (G, N, E) and real-token mask (G, N) -> dispatch (G, N, E, C) 0/1, combine
    (G, N, E, C) gate weights, and the group's statistics (means over real tokens): balance
    (the Switch loss), dropped (fraction of assignments over capacity), load (E,) (fraction of
    assignments per expert), entropy (of the router distribution)."""
    experts = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    gates, chosen = jax.lax.top_k(probs, top_k)  # (G, N, k)
    if top_k > 1:  # GShard: the chosen gates renormalised to sum to 1
        gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    real_f = real.astype(jnp.float32)
    assigned = jax.nn.one_hot(chosen, experts, dtype=jnp.float32) * real_f[..., None, None]  # (G, N, k, E)
    # the position of each assignment in its expert's buffer: all first choices, then all second
    by_choice = jnp.swapaxes(assigned, 1, 2).reshape(assigned.shape[0], -1, experts)  # (G, k N, E)
    position = jnp.cumsum(by_choice, axis=1) - 1.0
    position = jnp.swapaxes(position.reshape(assigned.shape[0], top_k, -1, experts), 1, 2)  # (G, N, k, E)
    kept = assigned * (position < slots)
    slot = jax.nn.one_hot(jnp.sum(position * kept, axis=-1).astype(jnp.int32), slots, dtype=jnp.float32)  # (G, N, k, C)
    kept_any = jnp.sum(kept, axis=-1)  # (G, N, k)
    dispatch = jnp.einsum("gnke,gnkc->gnec", kept, slot * kept_any[..., None])
    combine = jnp.einsum("gnke,gnkc->gnec", kept, slot * (kept_any * gates)[..., None])
    tokens = jnp.sum(real_f, axis=1)  # (G,)
    count = jnp.maximum(tokens, 1.0)
    total = jnp.maximum(jnp.sum(tokens), 1.0)
    load = jnp.sum(assigned, axis=(1, 2)) / (count[:, None] * top_k)  # (G, E)
    mean_prob = jnp.sum(probs * real_f[..., None], axis=1) / count[:, None]
    entropy = -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)
    # means over real tokens, not over groups: a sum of per-token terms is the same however the
    # groups are spread over micro-batches (the engine weights aux terms by positions)
    stats = {"balance": jnp.sum(tokens * experts * jnp.sum(load * mean_prob, axis=-1)) / total,
             "dropped": 1.0 - jnp.sum(kept) / jnp.maximum(jnp.sum(assigned), 1.0),
             "load": jnp.sum(tokens[:, None] * load, axis=0) / total,
             "entropy": jnp.sum(entropy * real_f) / total}
    return dispatch, combine, stats


class MoEFeedForward(nn.Module):
    """(G, N, D) tokens -> (G, N, D); sows its routing statistics under "intermediates"/"moe"."""

    d_ff: int
    activation: str
    experts: int
    top_k: int
    capacity_factor: float

    @nn.compact
    def __call__(self, x: jax.Array, real: jax.Array, deterministic: bool) -> jax.Array:
        d, e = x.shape[-1], self.experts
        router = logical_param(self, "router", nn.initializers.normal(0.02), (d, e), (axes.EMBED, None))
        w_in = logical_param(self, "wi", _XAVIER, (e, d, self.d_ff), (axes.EXPERT, axes.EMBED, axes.MLP))
        w_out = logical_param(self, "wo", _XAVIER, (e, self.d_ff, d), (axes.EXPERT, axes.MLP, axes.EMBED))
        tokens = x.shape[1]
        slots = tokens if deterministic else capacity(tokens, e, self.top_k, self.capacity_factor)
        dispatch, combine, stats = route(x.astype(jnp.float32) @ router, real, self.top_k, slots)
        self.sow("intermediates", "moe", stats)
        act = jax.nn.relu if self.activation == "relu" else functools.partial(jax.nn.gelu, approximate=False)
        expert_in = jnp.einsum("gnd,gnec->egcd", x, dispatch.astype(x.dtype))  # placed as the experts are
        hidden = act(jnp.einsum("egcd,edf->egcf", expert_in, w_in.astype(x.dtype)))
        expert_out = jnp.einsum("egcf,efd->egcd", hidden, w_out.astype(x.dtype))
        return jnp.einsum("egcd,gnec->gnd", expert_out, combine.astype(x.dtype))
