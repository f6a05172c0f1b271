"""The decoder-only sequential recommenders: shared input and output, HSTU or SASRec blocks.

Shapes: B rows, L tokens per row, D = d_model. Inputs are the pipeline's batch fields (see
data/pipeline.py): items, timestamps, next_timestamps, segment_ids, positions, all (B, L).
Output: (B, L, D) L2-normalised embeddings; item scores are cosine similarities with the
L2-normalised rows of the (tied) item table.
"""

from __future__ import annotations

import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import axes
from models.config import ModelConfig
from models.attention import time_buckets
from models.hstu import HSTUBlock
from models.layers import attention_mask, l2_normalize, logical_param, truncated_normal
from models.sasrec import SASRecBlock

MODEL_INPUTS = ("items", "timestamps", "next_timestamps", "segment_ids", "positions")


class SequentialRecommender(nn.Module):
    config: ModelConfig
    num_items: int

    def setup(self) -> None:
        cfg = self.config
        self.item_table = logical_param(self, "item_embedding", truncated_normal(0.02),
                                        (self.num_items + 1, cfg.d_model), (axes.VOCAB, axes.EMBED))
        # The reference HSTU re-initialises its positional table Xavier-normal (HSTU.reset_params
        # skips only the blocks and the item table); its SASRec keeps the truncated N(0, 1/D).
        position_init = (nn.initializers.variance_scaling(1.0, "fan_avg", "normal") if cfg.family == "hstu"
                         else truncated_normal(math.sqrt(1.0 / cfg.d_model)))
        self.position_table = logical_param(self, "position_embedding", position_init,
                                            (cfg.max_positions, cfg.d_model), (axes.POSITIONS, axes.EMBED))
        block = HSTUBlock if cfg.family == "hstu" else SASRecBlock
        self.blocks = [block(cfg, name=f"block_{i}") for i in range(cfg.blocks)]
        self.input_dropout = nn.Dropout(cfg.input_dropout)

    def __call__(self, batch: Mapping[str, jax.Array], deterministic: bool = True) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        real = (batch["segment_ids"] > 0)[..., None]
        x = jnp.take(self.item_table, batch["items"], axis=0, mode="clip") * math.sqrt(cfg.d_model)
        x = x + jnp.take(self.position_table, batch["positions"], axis=0, mode="clip")
        x = self.input_dropout(x, deterministic=deterministic)
        x = nn.with_logical_constraint(jnp.where(real, x, 0.0).astype(dtype), (axes.BATCH, axes.LENGTH, axes.EMBED))
        context = {"positions": batch["positions"]}
        if cfg.family == "hstu" and cfg.attention == "blockwise":  # each block builds its own tiles
            context.update({name: batch[name] for name in ("timestamps", "next_timestamps", "segment_ids")})
        else:
            context["mask"] = attention_mask(batch["segment_ids"])
            if cfg.family == "hstu":
                context["time_buckets"] = time_buckets(batch["next_timestamps"], batch["timestamps"], cfg.time_buckets)
        for block in self.blocks:
            x = block(x, context, deterministic=deterministic)
        x = jnp.where(real, x, 0.0)
        return l2_normalize(x.astype(jnp.float32))

    def candidates(self) -> jax.Array:
        """(num_items + 1, D) L2-normalised item embeddings; row 0 is padding."""
        return l2_normalize(self.item_table)


def build_model(config: ModelConfig, num_items: int) -> SequentialRecommender:
    config.validate()
    return SequentialRecommender(config, num_items)
