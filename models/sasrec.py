"""One SASRec block (Kang & McAuley 2018) as the HSTU reference harness runs it
(generative_recommenders/research/modeling/sequential/sasrec.py):

  q = LayerNorm(x)
  y = LayerNorm(q + MHA(q, x, x))       causal within a segment, softmax, 1/sqrt(dh), dropout on weights
  x = y + Dropout(W2 Dropout(act(W1 y)))
The attention computes the causal square in model.causal_splits query blocks, as HSTU's dense
attention does (keys after a block's end are all masked, so the softmax is unchanged).
LayerNorms have no learned parameters (eps 1e-8); there is no final LayerNorm (the output is
L2-normalised by the decoder). Weight matrices start Xavier-normal, biases at 0 (attention) or
torch's Linear default (feed-forward), as the reference's reset_state leaves them.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes
from models.attention import causal_query_blocks
from models.config import ModelConfig
from models.layers import layer_norm, logical_param, torch_linear_bias_init

_NEG_INF = -1e9
_XAVIER_NORMAL = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


class SASRecBlock(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, context: Mapping[str, jax.Array], deterministic: bool = True) -> jax.Array:
        cfg = self.config
        d, heads, ffn = cfg.d_model, cfg.heads, cfg.ffn_width
        dtype = x.dtype
        w_qkv = logical_param(self, "qkv_kernel", _XAVIER_NORMAL, (d, 3 * d), (axes.EMBED, axes.QKV))
        b_qkv = logical_param(self, "qkv_bias", nn.initializers.zeros, (3 * d,), (axes.QKV,))
        w_out = logical_param(self, "out_kernel", _XAVIER_NORMAL, (d, d), (axes.HEADS_DIM, axes.EMBED))
        b_out = logical_param(self, "out_bias", nn.initializers.zeros, (d,), (axes.EMBED,))
        w_in = logical_param(self, "ffn_in_kernel", _XAVIER_NORMAL, (d, ffn), (axes.EMBED, axes.MLP))
        b_in = logical_param(self, "ffn_in_bias", torch_linear_bias_init(d), (ffn,), (axes.MLP,))
        w_ffn_out = logical_param(self, "ffn_out_kernel", _XAVIER_NORMAL, (ffn, d), (axes.MLP, axes.EMBED))
        b_ffn_out = logical_param(self, "ffn_out_bias", torch_linear_bias_init(ffn), (d,), (axes.EMBED,))
        dropout = nn.Dropout(cfg.dropout)

        query_in = layer_norm(x, eps=1e-8)
        w_q, w_k, w_v = jnp.split(w_qkv.astype(dtype), 3, axis=1)
        b_q, b_k, b_v = jnp.split(b_qkv.astype(dtype), 3)
        split_heads = lambda t: einops.rearrange(t, "b l (h d) -> b l h d", h=heads)
        q = split_heads(query_in @ w_q + b_q)
        k = split_heads(x @ w_k + b_k)
        v = split_heads(x @ w_v + b_v)
        blocks = []
        for start, end in causal_query_blocks(x.shape[1], cfg.causal_splits):
            q_block, k_block, v_block = (jnp.swapaxes(t, 1, 2) for t in (q[:, start:end], k[:, :end], v[:, :end]))
            scores = jnp.einsum("bhid,bhjd->bhij", q_block, k_block) / math.sqrt(d // heads)
            mask = context["mask"][:, None, start:end, :end]
            scores = jnp.where(mask, scores.astype(jnp.float32), _NEG_INF)
            weights = jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0).astype(dtype)
            weights = dropout(weights, deterministic=deterministic)
            blocks.append(jnp.swapaxes(jnp.einsum("bhij,bhjd->bhid", weights, v_block), 1, 2))
        attended = einops.rearrange(jnp.concatenate(blocks, axis=1), "b l h d -> b l (h d)")
        y = layer_norm(query_in + (attended @ w_out.astype(dtype) + b_out.astype(dtype)), eps=1e-8)

        activation = jax.nn.relu if cfg.ffn_activation == "relu" else functools.partial(jax.nn.gelu, approximate=False)
        hidden = dropout(activation(y @ w_in.astype(dtype) + b_in.astype(dtype)), deterministic=deterministic)
        x = y + dropout(hidden @ w_ffn_out.astype(dtype) + b_ffn_out.astype(dtype), deterministic=deterministic)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
