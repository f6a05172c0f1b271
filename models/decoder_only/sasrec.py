"""The SASRec family: config and block (Kang & McAuley 2018) as the HSTU reference harness runs it
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

import dataclasses
import functools
import math
from typing import Any, ClassVar, Literal, Mapping

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from config.fields import ConfigError, non_negative
from models.core import axes, family, parametrization
from models.core.attention import causal_query_blocks
from models.decoder_only.decoder import DecoderConfig, DecoderFamily
from models.core.layers import (ATTENTION_SCOPE, RowDropout, attention_mask, layer_norm, logical_param,
                                torch_linear_bias_init, truncated_normal)

_NEG_INF = -1e9
_XAVIER_NORMAL = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


@dataclasses.dataclass(frozen=True)
class SASRecConfig(DecoderConfig):
    """SASRec (the decoder fields, plus): ffn_dim: the feed-forward hidden width (0 -> d_model);
    ffn_activation: relu or gelu."""

    ID_FIELDS: ClassVar[tuple[str, ...]] = (
        "d_model", "blocks", "heads", "max_positions", "dropout", "input_dropout", "ffn_dim", "ffn_activation",
        "compute_dtype", "causal_splits")
    ID_LEGACY: ClassVar[Mapping[str, Any]] = {"dqk": 0, "dv": 0, "attention_divisor": 0, "time_buckets": 128,
                                              "attention": "dense", "attention_block": 256}

    family: Literal["sasrec"] = "sasrec"
    ffn_dim: int = non_negative(0, ">= 0 (0 = d_model)")
    ffn_activation: Literal["relu", "gelu"] = "relu"

    @property
    def ffn_width(self) -> int:
        return self.ffn_dim or self.d_model

    def check(self) -> None:
        attention = dict(self.legacy_values).get("attention", "dense")
        if attention != "dense":
            raise ConfigError(f"model.attention={attention!r}: SASRec attention is dense (blockwise is HSTU's)")
        if self.d_model % self.heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.heads={self.heads}")


class SASRecBlock(nn.Module):
    config: SASRecConfig

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
        m = parametrization.width_multiplier(cfg)  # µP: biases keep the base width's spread
        b_in = logical_param(self, "ffn_in_bias", torch_linear_bias_init(d / m), (ffn,), (axes.MLP,))
        w_ffn_out = logical_param(self, "ffn_out_kernel", _XAVIER_NORMAL, (ffn, d), (axes.MLP, axes.EMBED))
        b_ffn_out = logical_param(self, "ffn_out_bias", torch_linear_bias_init(ffn / m), (d,), (axes.EMBED,))
        dropout = functools.partial(RowDropout(cfg.dropout), rows=context["rows"])

        query_in = layer_norm(x, eps=1e-8)
        w_q, w_k, w_v = jnp.split(w_qkv.astype(dtype), 3, axis=1)
        b_q, b_k, b_v = jnp.split(b_qkv.astype(dtype), 3)
        split_heads = lambda t: einops.rearrange(t, "b l (h d) -> b l h d", h=heads)
        q = split_heads(query_in @ w_q + b_q)
        k = split_heads(x @ w_k + b_k)
        v = split_heads(x @ w_v + b_v)
        blocks = []
        with jax.named_scope(ATTENTION_SCOPE):
            for start, end in causal_query_blocks(x.shape[1], cfg.causal_splits):
                q_block, k_block, v_block = (jnp.swapaxes(t, 1, 2) for t in (q[:, start:end], k[:, :end], v[:, :end]))
                scores = jnp.einsum("bhid,bhjd->bhij", q_block, k_block) * (
                    parametrization.attention_factor(cfg, True, over_sqrt_d=True) / math.sqrt(d // heads))
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


class SASRec(DecoderFamily):
    name = "sasrec"
    config_class = SASRecConfig
    block = SASRecBlock

    def position_init(self, config: SASRecConfig):
        return truncated_normal(math.sqrt(1.0 / parametrization.input_width(config)))  # the reference's N(0, 1/D)

    def block_context(self, config: SASRecConfig, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        with jax.named_scope(ATTENTION_SCOPE):
            return {"positions": batch["positions"], "mask": attention_mask(batch["segment_ids"])}

    def linear_flops_per_token(self, config: SASRecConfig) -> float:
        d = config.d_model
        return 2.0 * d * 3 * d + 2.0 * d * d + 2.0 * 2 * d * config.ffn_width

    def attention_flops_per_pair(self, config: SASRecConfig) -> float:
        return 2.0 * 2 * config.d_model

    def block_params(self, config: SASRecConfig) -> int:
        d, f = config.d_model, config.ffn_width
        return 3 * d * d + 3 * d + d * d + d + d * f + f + f * d + d  # LayerNorms have no parameters

    def reduction_products_per_token(self, config: SASRecConfig) -> float:
        """Two LayerNorms of width D, 4 row means of 2 D FLOPs each."""
        return config.blocks * 16.0 * config.d_model


family.register(SASRec())
