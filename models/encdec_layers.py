"""The encoder-decoder's layers (T5-style, pre-norm): norms, attention, feed-forward, blocks, and
the T5 relative-position buckets.

Shape convention: the encoder works on (B, S, D); the decoder on (B, C, T, D), C candidate
sequences per memory row (C = 1 in training, one per scored item in the exact scorer), so the
cross-attention keys and values of a memory row are projected once for all its candidates.
A = heads x head_dim, the attention width; F = d_ff.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import axes
from models.layers import logical_param

_XAVIER = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_NEG_INF = -1e9


def relative_buckets(query_length: int, key_length: int, bidirectional: bool, num_buckets: int,
                     max_distance: int) -> np.ndarray:
    """(query_length, key_length) T5 buckets of key - query (Raffel et al. 2020): exact buckets
    for small distances, logarithmic ones up to max_distance; bidirectional buckets split by sign."""
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    bucket = np.zeros_like(relative)
    n = -relative
    if bidirectional:
        num_buckets //= 2
        bucket += (n < 0) * num_buckets
        n = np.abs(n)
    else:
        n = np.maximum(n, 0)
    exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact)
                         * (num_buckets - exact)).astype(np.int64)
    bucket += np.where(n < exact, n, np.minimum(large, num_buckets - 1))
    return bucket.astype(np.int32)


class Norm(nn.Module):
    """RMSNorm (T5: scale only) or LayerNorm (scale and bias) over the last axis, in float32."""

    kind: str
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = logical_param(self, "scale", nn.initializers.ones, (d,), (axes.EMBED,))
        x32 = x.astype(jnp.float32)
        if self.kind == "layernorm":
            bias = logical_param(self, "bias", nn.initializers.zeros, (d,), (axes.EMBED,))
            centred = x32 - jnp.mean(x32, -1, keepdims=True)
            normed = centred * jax.lax.rsqrt(jnp.mean(centred**2, -1, keepdims=True) + self.eps) * scale + bias
        else:
            normed = x32 * jax.lax.rsqrt(jnp.mean(x32**2, -1, keepdims=True) + self.eps) * scale
        return normed.astype(x.dtype)


class FeedForward(nn.Module):
    """x -> act(x W_in) W_out, no biases (T5). No dropout inside: the block drops its output."""

    d_ff: int
    activation: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        w_in = logical_param(self, "wi", _XAVIER, (d, self.d_ff), (axes.EMBED, axes.MLP))
        w_out = logical_param(self, "wo", _XAVIER, (self.d_ff, d), (axes.MLP, axes.EMBED))
        act = jax.nn.relu if self.activation == "relu" else functools.partial(jax.nn.gelu, approximate=False)
        return act(x @ w_in.astype(x.dtype)) @ w_out.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head attention, softmax with 1/sqrt(head_dim). `keys_from` (B, S, D), or None for
    self-attention; queries (B, [C,] T, D); mask broadcastable to (B, [C,] H, T, S); bias
    (H, T, S) or None."""

    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, keys_from: jax.Array | None, mask: jax.Array, bias: jax.Array | None,
                 deterministic: bool) -> jax.Array:
        d, width = x.shape[-1], self.heads * self.head_dim
        dtype = x.dtype
        w_q = logical_param(self, "q", _XAVIER, (d, width), (axes.EMBED, axes.QKV))
        w_k = logical_param(self, "k", _XAVIER, (d, width), (axes.EMBED, axes.QKV))
        w_v = logical_param(self, "v", _XAVIER, (d, width), (axes.EMBED, axes.QKV))
        w_o = logical_param(self, "o", _XAVIER, (width, d), (axes.HEADS_DIM, axes.EMBED))
        source = x if keys_from is None else keys_from
        split = lambda t: einops.rearrange(t, "... s (h e) -> ... h s e", h=self.heads)
        q, k, v = split(x @ w_q.astype(dtype)), split(source @ w_k.astype(dtype)), split(source @ w_v.astype(dtype))
        if keys_from is not None and x.ndim == 4:  # (B, C, T, D) queries against (B, S, D) memory
            scores = jnp.einsum("bchte,bhse->bchts", q, k)
        else:
            scores = jnp.einsum("...hte,...hse->...hts", q, k)
        scores = scores.astype(jnp.float32) / math.sqrt(self.head_dim)
        if bias is not None:
            scores = scores + bias
        scores = jnp.where(mask, scores, _NEG_INF)
        # No dropout on the attention weights: on a CPU drawing a mask per (query, key) pair costs
        # more than the whole attention (the residual branches and embeddings keep theirs).
        weights = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0).astype(dtype)
        if keys_from is not None and x.ndim == 4:
            attended = jnp.einsum("bchts,bhse->bchte", weights, v)
        else:
            attended = jnp.einsum("...hts,...hse->...hte", weights, v)
        return einops.rearrange(attended, "... h t e -> ... t (h e)") @ w_o.astype(dtype)


class EncoderBlock(nn.Module):
    config: Any  # EncDecConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array | None, deterministic: bool) -> jax.Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout)
        attended = Attention(cfg.heads, cfg.attention_head_dim, name="self_attention")(
            Norm(cfg.norm, name="norm_attention")(x), None, mask, bias, deterministic)
        x = x + drop(attended, deterministic=deterministic)
        ffn = FeedForward(cfg.d_ff, cfg.activation, name="ffn")(Norm(cfg.norm, name="norm_ffn")(x))
        return nn.with_logical_constraint(x + drop(ffn, deterministic=deterministic), (axes.BATCH, axes.LENGTH, axes.EMBED))


class DecoderBlock(nn.Module):
    config: Any  # EncDecConfig

    @nn.compact
    def __call__(self, x: jax.Array, memory: jax.Array, self_mask: jax.Array, cross_mask: jax.Array,
                 bias: jax.Array | None, deterministic: bool) -> jax.Array:
        cfg = self.config
        drop = nn.Dropout(cfg.dropout)
        attended = Attention(cfg.heads, cfg.attention_head_dim, name="self_attention")(
            Norm(cfg.norm, name="norm_self")(x), None, self_mask, bias, deterministic)
        x = x + drop(attended, deterministic=deterministic)
        crossed = Attention(cfg.heads, cfg.attention_head_dim, name="cross_attention")(
            Norm(cfg.norm, name="norm_cross")(x), memory, cross_mask, None, deterministic)
        x = x + drop(crossed, deterministic=deterministic)
        ffn = FeedForward(cfg.d_ff, cfg.activation, name="ffn")(Norm(cfg.norm, name="norm_ffn")(x))
        return x + drop(ffn, deterministic=deterministic)
