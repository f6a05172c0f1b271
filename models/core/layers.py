"""Small building blocks shared by the decoder-only models.

LayerNorm and bias addition come in two forms with the same numbers: plain jnp with autodiff,
and XLA:CPU-tuned kernels (row means as matrix-vector products, hand-written backward passes)
that are slower elsewhere. `hand_written_kernels()` picks the CPU form on a CPU backend only,
unless `models.core.family.accelerator_paths()` asks for an accelerator's code on the CPU;
`force_hand_written_kernels` overrides both (tests compare the two).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.core.family import (ATTENTION_SCOPE, EMBEDDING_SCOPE, LOSS_SCOPE, NEGATIVES_SCOPE,  # noqa: F401 (the models' scopes)
                           accelerator_paths)

Initializer = Callable[..., jax.Array]


_forced_kernels: list[bool] = []


def hand_written_kernels() -> bool:
    """Whether traced code uses the XLA:CPU-tuned kernels: on the CPU backend, unless forced or
    accelerator_paths()."""
    if _forced_kernels:
        return _forced_kernels[-1]
    return jax.default_backend() == "cpu" and not accelerator_paths()


@contextlib.contextmanager
def force_hand_written_kernels(enabled: bool) -> Iterator[None]:
    """Trace with (True) or without (False) the CPU kernels, whatever the backend."""
    _forced_kernels.append(enabled)
    try:
        yield
    finally:
        _forced_kernels.pop()


def logical_param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int], axes: Sequence[str | None]) -> jax.Array:
    """A float32 parameter annotated with logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), jnp.float32)


def _row_mean(x: jax.Array) -> jax.Array:
    """Mean over the last axis, keepdims, as a matrix-vector product: XLA:CPU runs it as one dot,
    where a reduce over a short last axis is a slow library call per tensor."""
    return x @ jnp.full((x.shape[-1], 1), 1.0 / x.shape[-1], x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _normalise(x32: jax.Array, eps: float) -> jax.Array:
    return _normalise_fwd(x32, eps)[0]


def _normalise_fwd(x32, eps):
    centred = x32 - _row_mean(x32)
    inverse_std = jax.lax.rsqrt(_row_mean(jnp.square(centred)) + eps)
    normed = centred * inverse_std
    return normed, (normed, inverse_std)


def _normalise_bwd(eps, residuals, grad):
    normed, inverse_std = residuals
    return (inverse_std * (grad - _row_mean(grad) - normed * _row_mean(grad * normed)),)


_normalise.defvjp(_normalise_fwd, _normalise_bwd)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias broadcast over y's leading axes; with the CPU kernels the bias gradient, a sum
    over those axes, is a vector-matrix product (see _row_mean)."""
    return _add_bias(y, bias) if hand_written_kernels() else y + bias


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    return y + bias


def _add_bias_fwd(y, bias):
    return y + bias, bias


def _add_bias_bwd(bias, grad):
    rows = grad.reshape(-1, bias.size)
    return grad, (jnp.ones((1, rows.shape[0]), grad.dtype) @ rows).reshape(bias.shape).astype(bias.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm over the last axis with no learned scale or shift, computed in float32."""
    x32 = x.astype(jnp.float32)
    if hand_written_kernels():
        return _normalise(x32, eps).astype(x.dtype)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    return (centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)).astype(x.dtype)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / max(||x||_2, eps) over the last axis. The floor is taken under the square root, so a
    zero vector (a ReLU MLP's output with every unit dead) has a zero gradient, not NaN (0 x the
    infinite slope of sqrt at 0)."""
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True), eps * eps))
    return (x / norm.astype(x.dtype)).astype(x.dtype)


def row_keys(key: jax.Array, rows: jax.Array) -> jax.Array:
    """(B,) keys fold_in(key, rows[b]): row b's random stream, whichever device or micro-batch
    holds it. rows: the global index of each row in the step's batch (models.core.family.ROW_IDS)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)


class RowDropout(nn.Module):
    """Dropout of (B, ...) activations whose mask for row b is drawn from row_keys(rng, rows)[b],
    so a row is dropped the same on any mesh and with any micro-batching (flax's nn.Dropout
    draws one mask for the whole array: it changes with the batch's split)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, rows: jax.Array | None, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        keys = row_keys(self.make_rng("dropout"), rows)
        mask = jax.vmap(lambda k: jax.random.bernoulli(k, keep, x.shape[1:]))(keys)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def torch_linear_bias_init(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch.nn.Linear's default bias init."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def truncated_normal(std: float) -> Initializer:
    """Normal(0, std) truncated at two standard deviations (torch's trunc_normal_ bounds scaled)."""
    return nn.initializers.truncated_normal(stddev=std)


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """(B, L, L) bool: query i may see key j when both are real tokens of one segment and j <= i.

    Segments are contiguous and left to right, so index order within a row is time order.
    """
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids > 0)[:, :, None]
    length = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    return same & real & causal[None]
