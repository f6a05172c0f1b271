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

from models.core import axes, parametrization
from models.core.layers import ATTENTION_SCOPE, RowDropout, logical_param
from models.encdec.moe import MoEFeedForward

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
    """Multi-head attention, softmax with 1/sqrt(head_dim), over d_model-wide inputs. `keys_from`
    (B, S, D), or None for self-attention; queries (B, [C,] T, D); mask broadcastable to
    (B, [C,] H, T, S); bias (H, T, S) or None. query / keys_values / attend are the pieces, for a
    decoder that caches keys and values."""

    d_model: int
    heads: int
    head_dim: int
    logit_factor: float = 1.0  # on top of 1 / sqrt(head_dim): µP's sqrt(base_d / d) (models/core/parametrization.py)

    def setup(self) -> None:
        d, width = self.d_model, self.heads * self.head_dim
        self.w_q = logical_param(self, "q", _XAVIER, (d, width), (axes.EMBED, axes.QKV))
        self.w_k = logical_param(self, "k", _XAVIER, (d, width), (axes.EMBED, axes.QKV))
        self.w_v = logical_param(self, "v", _XAVIER, (d, width), (axes.EMBED, axes.QKV))
        self.w_o = logical_param(self, "o", _XAVIER, (width, d), (axes.HEADS_DIM, axes.EMBED))

    def _split(self, t: jax.Array) -> jax.Array:
        return einops.rearrange(t, "... s (h e) -> ... h s e", h=self.heads)

    def query(self, x: jax.Array) -> jax.Array:
        """(..., T, D) -> (..., H, T, E)."""
        return self._split(x @ self.w_q.astype(x.dtype))

    def keys_values(self, source: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(..., S, D) -> keys and values, each (..., H, S, E)."""
        return self._split(source @ self.w_k.astype(source.dtype)), self._split(source @ self.w_v.astype(source.dtype))

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, bias: jax.Array | None) -> jax.Array:
        """Queries (B, [C,] H, T, E) against keys and values (B, [C,] H, S, E); keys without the
        C axis (a memory row's) serve all its C query sequences. -> (B, [C,] T, D)."""
        dtype = q.dtype
        shared = k.ndim < q.ndim  # (B, C, H, T, E) queries against (B, H, S, E) memory
        with jax.named_scope(ATTENTION_SCOPE):
            scores = jnp.einsum("bchte,bhse->bchts" if shared else "...hte,...hse->...hts", q, k)
            scores = scores.astype(jnp.float32) * (self.logit_factor / math.sqrt(self.head_dim))
            if bias is not None:
                scores = scores + bias
            scores = jnp.where(mask, scores, _NEG_INF)
            # No dropout on the attention weights: on a CPU drawing a mask per (query, key) pair costs
            # more than the whole attention (the residual branches and embeddings keep theirs).
            weights = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0).astype(dtype)
            attended = jnp.einsum("bchts,bhse->bchte" if shared else "...hts,...hse->...hte", weights, v)
        return einops.rearrange(attended, "... h t e -> ... t (h e)") @ self.w_o.astype(dtype)

    def __call__(self, x: jax.Array, keys_from: jax.Array | None, mask: jax.Array, bias: jax.Array | None,
                 deterministic: bool) -> jax.Array:
        k, v = self.keys_values(x if keys_from is None else keys_from)
        return self.attend(self.query(x), k, v, mask, bias)


def _logit_factor(cfg: Any) -> float:
    return parametrization.attention_factor(cfg, not cfg.head_dim, over_sqrt_d=True)


class EncoderBlock(nn.Module):
    config: Any  # EncDecConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array | None, deterministic: bool,
                 rows: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        drop = RowDropout(cfg.dropout)
        attended = Attention(cfg.d_model, cfg.heads, cfg.attention_head_dim, _logit_factor(cfg), name="self_attention")(
            Norm(cfg.norm, name="norm_attention")(x), None, mask, bias, deterministic)
        x = x + drop(attended, rows, deterministic=deterministic)
        ffn = FeedForward(cfg.d_ff, cfg.activation, name="ffn")(Norm(cfg.norm, name="norm_ffn")(x))
        return nn.with_logical_constraint(x + drop(ffn, rows, deterministic=deterministic),
                                          (axes.BATCH, axes.LENGTH, axes.EMBED))


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention, cross-attention, feed-forward. `step` runs one position
    of C sequences per memory row against a key/value cache (beam search)."""

    config: Any  # EncDecConfig

    def setup(self) -> None:
        cfg = self.config
        self.drop = RowDropout(cfg.dropout)
        self.norm_self = Norm(cfg.norm)
        self.self_attention = Attention(cfg.d_model, cfg.heads, cfg.attention_head_dim, _logit_factor(cfg))
        self.norm_cross = Norm(cfg.norm)
        self.cross_attention = Attention(cfg.d_model, cfg.heads, cfg.attention_head_dim, _logit_factor(cfg))
        self.norm_ffn = Norm(cfg.norm)
        if cfg.experts:
            self.ffn = MoEFeedForward(cfg.expert_d_ff or cfg.d_ff, cfg.activation, cfg.experts, cfg.top_k,
                                      cfg.capacity_factor)
        else:
            self.ffn = FeedForward(cfg.d_ff, cfg.activation)

    def _feed_forward(self, x: jax.Array, real: jax.Array | None, group: int, deterministic: bool) -> jax.Array:
        """x (B, C, T, D); a mixture of experts routes groups of `group` consecutive sequences of
        (B, C) together, the tokens of `real` (B, C) sequences only."""
        if not self.config.experts:
            return self.ffn(x)
        b, c, t, d = x.shape
        real = jnp.ones((b, c), bool) if real is None else real
        groups = x.reshape(b * c // group, group * t, d)
        mask = jnp.broadcast_to(real[..., None], (b, c, t)).reshape(groups.shape[:2])
        return self.ffn(groups, mask, deterministic).reshape(x.shape)

    def _cross_and_ffn(self, x: jax.Array, memory_kv: tuple[jax.Array, jax.Array], cross_mask: jax.Array,
                       real: jax.Array | None, group: int, deterministic: bool,
                       rows: jax.Array | None = None) -> jax.Array:
        crossed = self.cross_attention.attend(self.cross_attention.query(self.norm_cross(x)), *memory_kv, cross_mask, None)
        x = x + self.drop(crossed, rows, deterministic=deterministic)
        ffn = self._feed_forward(self.norm_ffn(x), real, group, deterministic)
        return x + self.drop(ffn, rows, deterministic=deterministic)

    def __call__(self, x: jax.Array, memory: jax.Array, self_mask: jax.Array, cross_mask: jax.Array,
                 bias: jax.Array | None, deterministic: bool, real: jax.Array | None = None,
                 group: int = 1, rows: jax.Array | None = None) -> jax.Array:
        """rows (B,): each sequence's example id, for per-row dropout masks (training only)."""
        attended = self.self_attention(self.norm_self(x), None, self_mask, bias, deterministic)
        x = x + self.drop(attended, rows, deterministic=deterministic)
        return self._cross_and_ffn(x, self.memory_keys_values(memory), cross_mask, real, group, deterministic, rows)

    def memory_keys_values(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-attention keys and values of (B, S, D) memory, each (B, H, S, E): once per user."""
        return self.cross_attention.keys_values(memory)

    def step(self, x: jax.Array, position: jax.Array, cache: tuple[jax.Array, jax.Array],
             memory_kv: tuple[jax.Array, jax.Array], cross_mask: jax.Array,
             bias_row: jax.Array | None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x (B, C, 1, D) at `position`; cache keys and values (B, C, H, T, E), this position's
        written in; bias_row (H, 1, T). Returns (B, C, 1, D) and the updated cache."""
        normed = self.norm_self(x)
        k_new, v_new = self.self_attention.keys_values(normed)
        k = jax.lax.dynamic_update_slice_in_dim(cache[0], k_new, position, axis=-2)
        v = jax.lax.dynamic_update_slice_in_dim(cache[1], v_new, position, axis=-2)
        visible = jnp.arange(k.shape[-2]) <= position  # (T,): keys at or before this position
        x = x + self.self_attention.attend(self.self_attention.query(normed), k, v, visible, bias_row)
        return self._cross_and_ffn(x, memory_kv, cross_mask, None, 1, True), (k, v)
