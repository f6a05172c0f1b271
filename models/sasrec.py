"""One SASRec block (Kang & McAuley 2018) as the HSTU reference harness runs it.

  q = LayerNorm(x);  x = q + MHA(q, x, x) (causal within a segment, softmax, 1/sqrt(dh))
  x = LayerNorm(x);  x = x + Dropout(W2 Dropout(ReLU(W1 x)))
then (after the last block) a final LayerNorm, applied by the decoder.
"""

from __future__ import annotations

import math
from typing import Mapping

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes
from models.config import ModelConfig
from models.layers import logical_param, torch_linear_bias_init

_NEG_INF = -1e9


def _layer_norm(name: str, dtype: jnp.dtype) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=1e-8, name=name, dtype=dtype, param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)),
    )


class SASRecBlock(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, context: Mapping[str, jax.Array], deterministic: bool = True) -> jax.Array:
        cfg = self.config
        d, heads, ffn = cfg.d_model, cfg.heads, cfg.ffn_width
        dtype = x.dtype
        w_qkv = logical_param(self, "qkv_kernel", nn.initializers.xavier_uniform(), (d, 3 * d), (axes.EMBED, axes.QKV))
        b_qkv = logical_param(self, "qkv_bias", nn.initializers.zeros, (3 * d,), (axes.QKV,))
        w_out = logical_param(self, "out_kernel", nn.initializers.xavier_uniform(), (d, d), (axes.HEADS_DIM, axes.EMBED))
        b_out = logical_param(self, "out_bias", nn.initializers.zeros, (d,), (axes.EMBED,))
        w_in = logical_param(self, "ffn_in_kernel", nn.initializers.lecun_uniform(), (d, ffn), (axes.EMBED, axes.MLP))
        b_in = logical_param(self, "ffn_in_bias", torch_linear_bias_init(d), (ffn,), (axes.MLP,))
        w_ffn_out = logical_param(self, "ffn_out_kernel", nn.initializers.lecun_uniform(), (ffn, d), (axes.MLP, axes.EMBED))
        b_ffn_out = logical_param(self, "ffn_out_bias", torch_linear_bias_init(ffn), (d,), (axes.EMBED,))
        dropout = nn.Dropout(cfg.dropout)

        query_in = _layer_norm("attention_norm", dtype)(x)
        w_q, w_k, w_v = jnp.split(w_qkv.astype(dtype), 3, axis=1)
        b_q, b_k, b_v = jnp.split(b_qkv.astype(dtype), 3)
        split_heads = lambda t: einops.rearrange(t, "b l (h d) -> b l h d", h=heads)
        q = split_heads(query_in @ w_q + b_q)
        k = split_heads(x @ w_k + b_k)
        v = split_heads(x @ w_v + b_v)
        scores = jnp.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d // heads)
        mask = context["mask"][:, None]
        scores = jnp.where(mask, scores.astype(jnp.float32), _NEG_INF)
        weights = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0).astype(dtype)
        weights = dropout(weights, deterministic=deterministic)
        attended = einops.rearrange(jnp.einsum("bhij,bjhd->bihd", weights, v), "b l h d -> b l (h d)")
        x = query_in + (attended @ w_out.astype(dtype) + b_out.astype(dtype))

        x = _layer_norm("ffn_norm", dtype)(x)
        activation = jax.nn.relu if cfg.ffn_activation == "relu" else jax.nn.gelu
        hidden = dropout(activation(x @ w_in.astype(dtype) + b_in.astype(dtype)), deterministic=deterministic)
        x = x + dropout(hidden @ w_ffn_out.astype(dtype) + b_ffn_out.astype(dtype), deterministic=deterministic)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
