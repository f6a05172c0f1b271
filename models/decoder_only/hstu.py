"""The HSTU family: config, block (Zhai et al., ICML 2024, arXiv 2402.17152, as
the reference code, meta-recsys/generative-recommenders' "research" path, computes it) and FLOP / parameter counts.

x: (B, L, D). U, V: (B, L, H, dv); Q, K: (B, L, H, dqk).
  U, V, Q, K = split(SiLU(LayerNorm(x) @ W_uvqk))
  A[i, j]    = SiLU(Q_i . K_j + rab(i, j)) / N  for j <= i in the same segment, else 0
  x         += Dropout(U * LayerNorm(A V)) @ W_o + b_o
  x         += Dropout(SiLU(LayerNorm(x) @ W_1 + b_1) @ W_2 + b_2)   only when feed_forward_dim > 0
rab(i, j) = w_pos[p_j - p_i + P - 1] + w_ts[bucket(t_{i+1} - t_j)], p = position in the segment,
P = max_positions, one (w_pos, w_ts) pair per block shared by all heads. models/core/attention.py
computes A V, dense or blockwise (model.attention).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal, Mapping

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from config.fields import ConfigError, non_negative, positive
from models.core import attention, axes, family, parametrization
from models.decoder_only.decoder import DecoderConfig, DecoderFamily
from models.core.layers import (ATTENTION_SCOPE, RowDropout, add_bias, attention_mask, hand_written_kernels, layer_norm,
                                logical_param, torch_linear_bias_init)


@dataclasses.dataclass(frozen=True)
class HSTUConfig(DecoderConfig):
    """HSTU (the decoder fields, plus): dqk / dv: per-head widths (0 -> d_model // heads).
    attention_divisor: the constant N in SiLU(QK + rab) / N (0 -> max_positions). time_buckets:
    log-time buckets (the spec's 128; the table has time_buckets + 1 entries). attention: "dense"
    (B, H, L, L) attention, or "blockwise": attention_block queries at a time, rematerialised in
    the backward pass, memory linear in L (models/core/attention.py). feed_forward_dim: 0 for the
    paper's block; F > 0 adds a SiLU feed-forward of width F after the attention (genrec's HSTU
    has one of 4 x d_model, phonism/genrec genrec/models/hstu.py). relative_bias: "learned" (the
    spec's rab), or "none": rab = 0, no position or time bias (genrec's HSTU on data without
    timestamps: its bucketing clamps every causal offset k - q <= 0 to one bucket, a constant)."""

    ID_FIELDS: ClassVar[tuple[str, ...]] = (
        "d_model", "blocks", "heads", "dqk", "dv", "max_positions", "attention_divisor", "dropout", "input_dropout",
        "time_buckets", "compute_dtype", "attention", "attention_block", "causal_splits")
    ID_LEGACY: ClassVar[Mapping[str, Any]] = {"ffn_dim": 0, "ffn_activation": "relu"}

    family: Literal["hstu"] = "hstu"
    dqk: int = non_negative(0, ">= 0 (0 = d_model // heads)")
    dv: int = non_negative(0, ">= 0 (0 = d_model // heads)")
    attention_divisor: int = non_negative(0, ">= 0 (0 = max_positions)")
    time_buckets: int = positive(128)
    attention: Literal["dense", "blockwise"] = "dense"
    attention_block: int = positive(256)
    feed_forward_dim: int = non_negative(0, ">= 0 (0 = none, the paper's block)")
    relative_bias: Literal["learned", "none"] = "learned"

    @property
    def head_dim_qk(self) -> int:
        return self.dqk or self.d_model // self.heads

    @property
    def head_dim_v(self) -> int:
        return self.dv or self.d_model // self.heads

    @property
    def divisor(self) -> int:
        return self.attention_divisor or self.max_positions

    def check(self) -> None:
        if not (self.dqk and self.dv) and self.d_model % self.heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.heads={self.heads}; "
                              f"set model.dqk and model.dv")


def silu_projection(x: jax.Array, w: jax.Array) -> jax.Array:
    """SiLU(x @ w) for x (B, L, D), w (D, E); with the CPU kernels, a hand-written backward.

    Autodiff's backward let XLA:CPU fuse the SiLU derivative, the concatenation of the U, V, Q, K
    gradients and a transpose into one slow strided loop (a quarter of the mid benchmark's step).
    Materialising d(x @ w) first, behind an optimisation barrier, leaves two plain matmuls.
    """
    if hand_written_kernels():
        return _silu_projection(x, w)
    return jax.nn.silu(jnp.einsum("bld,de->ble", x, w))


@jax.custom_vjp
def _silu_projection(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.nn.silu(jnp.einsum("bld,de->ble", x, w))


def _silu_projection_fwd(x, w):
    pre = jnp.einsum("bld,de->ble", x, w)
    return jax.nn.silu(pre), (x, w, pre)


def _silu_projection_bwd(residuals, grad):
    x, w, pre = residuals
    sig = jax.nn.sigmoid(pre)
    d_pre = jax.lax.optimization_barrier(grad * sig * (1 + pre * (1 - sig)))
    return jnp.einsum("ble,de->bld", d_pre, w), jnp.einsum("bld,ble->de", x, d_pre)


_silu_projection.defvjp(_silu_projection_fwd, _silu_projection_bwd)


class HSTUBlock(nn.Module):
    config: HSTUConfig

    @nn.compact
    def __call__(self, x: jax.Array, context: Mapping[str, jax.Array], deterministic: bool = True) -> jax.Array:
        cfg = self.config
        heads, dqk, dv, d = cfg.heads, cfg.head_dim_qk, cfg.head_dim_v, cfg.d_model
        dtype = x.dtype
        w_uvqk = logical_param(self, "uvqk", nn.initializers.normal(parametrization.hidden_init_std(cfg, 0.02)),
                               (d, 2 * heads * dv + 2 * heads * dqk), (axes.EMBED, axes.QKV))
        w_out = logical_param(self, "out_kernel", nn.initializers.xavier_uniform(), (heads * dv, d),
                              (axes.HEADS_DIM, axes.EMBED))
        b_out = logical_param(self, "out_bias", torch_linear_bias_init(heads * dv / parametrization.width_multiplier(cfg)),
                              (d,), (axes.EMBED,))
        positions_count = cfg.max_positions
        if cfg.relative_bias == "learned":
            w_pos = logical_param(self, "rel_pos_bias", nn.initializers.normal(0.02), (2 * positions_count - 1,),
                                  (axes.RELATIVE,))
            w_time = logical_param(self, "rel_time_bias", nn.initializers.normal(0.02), (cfg.time_buckets + 1,),
                                   (axes.RELATIVE,))
        else:
            w_pos, w_time = jnp.zeros((2 * positions_count - 1,)), jnp.zeros((cfg.time_buckets + 1,))

        uvqk = silu_projection(layer_norm(x), w_uvqk.astype(dtype))
        u, v, q, k = jnp.split(uvqk, [heads * dv, 2 * heads * dv, 2 * heads * dv + heads * dqk], axis=-1)
        v = einops.rearrange(v, "b l (h d) -> b l h d", h=heads)
        q = einops.rearrange(q, "b l (h d) -> b l h d", h=heads) * parametrization.attention_factor(cfg, not cfg.dqk, over_sqrt_d=False)
        k = einops.rearrange(k, "b l (h d) -> b l h d", h=heads)

        with jax.named_scope(ATTENTION_SCOPE):
            if cfg.attention == "blockwise":
                attended = attention.blockwise(q, k, v, w_pos, w_time, context["timestamps"],
                                               context["next_timestamps"], context["segment_ids"], cfg.divisor,
                                               cfg.attention_block)
            else:
                attended = attention.dense(q, k, v, w_pos, w_time, context["time_buckets"], context["mask"],
                                           cfg.divisor, cfg.causal_splits)
        attended = einops.rearrange(attended, "b l h d -> b l (h d)")
        gated = u * layer_norm(attended)
        gated = RowDropout(cfg.dropout)(gated, context["rows"], deterministic=deterministic)
        update = add_bias(jnp.einsum("ble,ed->bld", gated, w_out.astype(dtype)), b_out.astype(dtype))
        x = nn.with_logical_constraint(x + update, (axes.BATCH, axes.LENGTH, axes.EMBED))
        if cfg.feed_forward_dim:
            x = x + self.feed_forward(x, context["rows"], deterministic)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.LENGTH, axes.EMBED))

    def feed_forward(self, x: jax.Array, rows: jax.Array, deterministic: bool) -> jax.Array:
        cfg, dtype = self.config, x.dtype
        d, f = cfg.d_model, cfg.feed_forward_dim
        init = nn.initializers.normal(parametrization.hidden_init_std(cfg, 0.02))
        w_in = logical_param(self, "ffn_in_kernel", init, (d, f), (axes.EMBED, axes.MLP))
        b_in = logical_param(self, "ffn_in_bias", nn.initializers.zeros, (f,), (axes.MLP,))
        w_out = logical_param(self, "ffn_out_kernel", init, (f, d), (axes.MLP, axes.EMBED))
        b_out = logical_param(self, "ffn_out_bias", nn.initializers.zeros, (d,), (axes.EMBED,))
        hidden = jax.nn.silu(add_bias(jnp.einsum("bld,df->blf", layer_norm(x), w_in.astype(dtype)), b_in.astype(dtype)))
        hidden = RowDropout(cfg.dropout)(hidden, rows, deterministic=deterministic)
        out = add_bias(jnp.einsum("blf,fd->bld", hidden, w_out.astype(dtype)), b_out.astype(dtype))
        return RowDropout(cfg.dropout)(out, rows, deterministic=deterministic)


class HSTU(DecoderFamily):
    name = "hstu"
    config_class = HSTUConfig
    block = HSTUBlock

    def position_init(self, config: HSTUConfig):
        # The reference HSTU re-initialises its positional table Xavier-normal (HSTU.reset_params
        # skips only the blocks and the item table); under µP with the base width's spread.
        if not parametrization.is_mup(config):
            return nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
        std = math.sqrt(2.0 / (config.max_positions + parametrization.input_width(config)))
        return lambda key, shape, dtype=jnp.float32: std * jax.random.normal(key, shape, dtype)

    def block_context(self, config: HSTUConfig, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        context = {"positions": batch["positions"]}
        if config.attention == "blockwise":  # each block builds its own tiles
            context.update({name: batch[name] for name in ("timestamps", "next_timestamps", "segment_ids")})
        else:
            with jax.named_scope(ATTENTION_SCOPE):
                context["mask"] = attention_mask(batch["segment_ids"])
                context["time_buckets"] = attention.time_buckets(batch["next_timestamps"], batch["timestamps"],
                                                                 config.time_buckets)
        return context

    def linear_flops_per_token(self, config: HSTUConfig) -> float:
        d, h = config.d_model, config.heads
        return (2.0 * d * (2 * h * config.head_dim_v + 2 * h * config.head_dim_qk) + 2.0 * h * config.head_dim_v * d
                + 4.0 * d * config.feed_forward_dim)

    def attention_flops_per_pair(self, config: HSTUConfig) -> float:
        return 2.0 * config.heads * (config.head_dim_qk + config.head_dim_v)

    def block_params(self, config: HSTUConfig) -> int:
        d, h = config.d_model, config.heads
        weights = d * (2 * h * config.head_dim_v + 2 * h * config.head_dim_qk) + h * config.head_dim_v * d + d
        if config.feed_forward_dim:
            weights += 2 * d * config.feed_forward_dim + config.feed_forward_dim + d
        if config.relative_bias == "none":
            return weights
        return weights + (2 * config.max_positions - 1) + (config.time_buckets + 1)

    def reduction_products_per_token(self, config: HSTUConfig) -> float:
        """Two LayerNorms (widths D and H dv) of 4 row means of 2 w FLOPs each (2 forward, 2 in the
        hand-written backward), and the output-bias gradient of 2 D."""
        feed_forward = 10.0 * config.d_model + 2.0 * config.feed_forward_dim if config.feed_forward_dim else 0.0
        return config.blocks * (8.0 * config.d_model + 8.0 * config.heads * config.head_dim_v + 2.0 * config.d_model
                                + feed_forward)

    def executed_pairs(self, config: HSTUConfig, row_len: int) -> tuple[float, int]:
        if config.attention != "blockwise":
            return super().executed_pairs(config, row_len)
        # the (block x block) tiles on and below the diagonal, padded to whole blocks, and their
        # forward run again in the rematerialised backward
        blocks = -(-row_len // config.attention_block)
        return float(config.attention_block**2 * blocks * (blocks + 1) // 2), family.TRAIN_MULTIPLIER + 1

    def extra_executed_flops(self, config: HSTUConfig, pairs: float) -> float:
        """The position-bias gradient as a vector-matrix product (add_bias): 2 H per pair."""
        learned = config.relative_bias == "learned"
        return config.blocks * 2.0 * config.heads * pairs if hand_written_kernels() and learned else 0.0

    def scores_bytes_per_row(self, config: HSTUConfig, row_len: int) -> float:
        queries = min(row_len, config.attention_block) if config.attention == "blockwise" else row_len
        return config.heads * queries * row_len * 4.0


family.register(HSTU())
