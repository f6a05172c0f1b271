"""One HSTU block (Zhai et al. 2024, arXiv 2402.17152), as ../shared/specs/hstu.md states it.

x: (B, L, D). U, V: (B, L, H, dv); Q, K: (B, L, H, dqk).
  U, V, Q, K = split(SiLU(LayerNorm(x) @ W_uvqk))
  A[i, j]    = SiLU(Q_i . K_j + rab(i, j)) / N  for j <= i in the same segment, else 0
  x         += Dropout(U * LayerNorm(A V)) @ W_o + b_o
rab(i, j) = w_pos[p_j - p_i + P - 1] + w_ts[bucket(t_{i+1} - t_j)], p = position in the segment,
P = max_positions, one (w_pos, w_ts) pair per block shared by all heads. models/attention.py
computes A V, dense or blockwise (model.attention).
"""

from __future__ import annotations

from typing import Mapping

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from models import attention, axes
from models.config import ModelConfig
from models.layers import add_bias, layer_norm, logical_param, torch_linear_bias_init


@jax.custom_vjp
def silu_projection(x: jax.Array, w: jax.Array) -> jax.Array:
    """SiLU(x @ w) for x (B, L, D), w (D, E), with a hand-written backward.

    Autodiff's backward let XLA:CPU fuse the SiLU derivative, the concatenation of the U, V, Q, K
    gradients and a transpose into one slow strided loop (a quarter of the mid benchmark's step).
    Materialising d(x @ w) first, behind an optimisation barrier, leaves two plain matmuls.
    """
    return jax.nn.silu(jnp.einsum("bld,de->ble", x, w))


def _silu_projection_fwd(x, w):
    pre = jnp.einsum("bld,de->ble", x, w)
    return jax.nn.silu(pre), (x, w, pre)


def _silu_projection_bwd(residuals, grad):
    x, w, pre = residuals
    sig = jax.nn.sigmoid(pre)
    d_pre = jax.lax.optimization_barrier(grad * sig * (1 + pre * (1 - sig)))
    return jnp.einsum("ble,de->bld", d_pre, w), jnp.einsum("bld,ble->de", x, d_pre)


silu_projection.defvjp(_silu_projection_fwd, _silu_projection_bwd)


class HSTUBlock(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, context: Mapping[str, jax.Array], deterministic: bool = True) -> jax.Array:
        cfg = self.config
        heads, dqk, dv, d = cfg.heads, cfg.head_dim_qk, cfg.head_dim_v, cfg.d_model
        dtype = x.dtype
        w_uvqk = logical_param(self, "uvqk", nn.initializers.normal(0.02), (d, 2 * heads * dv + 2 * heads * dqk),
                               (axes.EMBED, axes.QKV))
        w_out = logical_param(self, "out_kernel", nn.initializers.xavier_uniform(), (heads * dv, d),
                              (axes.HEADS_DIM, axes.EMBED))
        b_out = logical_param(self, "out_bias", torch_linear_bias_init(heads * dv), (d,), (axes.EMBED,))
        positions_count = cfg.max_positions
        w_pos = logical_param(self, "rel_pos_bias", nn.initializers.normal(0.02), (2 * positions_count - 1,),
                              (axes.RELATIVE,))
        w_time = logical_param(self, "rel_time_bias", nn.initializers.normal(0.02), (cfg.time_buckets + 1,),
                               (axes.RELATIVE,))

        uvqk = silu_projection(layer_norm(x), w_uvqk.astype(dtype))
        u, v, q, k = jnp.split(uvqk, [heads * dv, 2 * heads * dv, 2 * heads * dv + heads * dqk], axis=-1)
        v = einops.rearrange(v, "b l (h d) -> b l h d", h=heads)
        q = einops.rearrange(q, "b l (h d) -> b l h d", h=heads)
        k = einops.rearrange(k, "b l (h d) -> b l h d", h=heads)

        if cfg.attention == "blockwise":
            attended = attention.blockwise(q, k, v, w_pos, w_time, context["timestamps"], context["next_timestamps"],
                                           context["segment_ids"], cfg.divisor, cfg.attention_block)
        else:
            attended = attention.dense(q, k, v, w_pos, w_time, context["time_buckets"], context["mask"], cfg.divisor,
                                       cfg.causal_splits)
        attended = einops.rearrange(attended, "b l h d -> b l (h d)")
        gated = u * layer_norm(attended)
        gated = nn.Dropout(cfg.dropout)(gated, deterministic=deterministic)
        update = add_bias(jnp.einsum("ble,ed->bld", gated, w_out.astype(dtype)), b_out.astype(dtype))
        return nn.with_logical_constraint(x + update, (axes.BATCH, axes.LENGTH, axes.EMBED))
