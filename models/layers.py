"""Small building blocks shared by the decoder-only models."""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


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


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias broadcast over y's leading axes; the bias gradient, a sum over those axes, is a
    vector-matrix product (see _row_mean)."""
    return y + bias


def _add_bias_fwd(y, bias):
    return y + bias, bias


def _add_bias_bwd(bias, grad):
    rows = grad.reshape(-1, bias.size)
    return grad, (jnp.ones((1, rows.shape[0]), grad.dtype) @ rows).reshape(bias.shape).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm over the last axis with no learned scale or shift, computed in float32."""
    return _normalise(x.astype(jnp.float32), eps).astype(x.dtype)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / max(||x||_2, eps) over the last axis."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True))
    return (x / jnp.maximum(norm, eps).astype(x.dtype)).astype(x.dtype)


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
