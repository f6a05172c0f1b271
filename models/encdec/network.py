"""The encoder-decoder network: one tied token table, a bidirectional encoder stack and a causal
decoder stack with cross-attention (models/encdec/layers.py), the level logits; the hashed user
token and the history windows an example's encoder reads.

Dropout (model.dropout) acts on the embeddings and every residual branch, not on attention
weights: on a CPU a mask per (query, key) pair costs more than the attention itself.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.core import axes, parametrization
from models.core.layers import EMBEDDING_SCOPE, RowDropout, logical_param, truncated_normal
from models.encdec.config import PAD, SPECIALS, EncDecConfig
from models.encdec.layers import DecoderBlock, EncoderBlock, Norm, relative_buckets

def _readout_scale(cfg: "EncDecConfig") -> float:
    """T5's D^-1/2 on the tied logits; under µP 1 / m on base_width^-1/2 (models/core/parametrization.py)."""
    return parametrization.readout_factor(cfg) / math.sqrt(parametrization.input_width(cfg))


class EncDecNetwork(nn.Module):
    """Token table, encoder stack, decoder stack. Inputs are vocabulary ids."""

    config: EncDecConfig

    def setup(self) -> None:
        cfg = self.config
        self.table = logical_param(self, "token_embedding", truncated_normal(1.0), (cfg.vocab_size, cfg.d_model),
                                   (axes.VOCAB, axes.EMBED))
        if cfg.positions == "learned":
            self.encoder_positions = logical_param(self, "encoder_position_embedding", truncated_normal(0.02),
                                                   (cfg.encoder_length, cfg.d_model), (axes.POSITIONS, axes.EMBED))
            self.decoder_positions = logical_param(self, "decoder_position_embedding", truncated_normal(0.02),
                                                   (cfg.id_length, cfg.d_model), (axes.POSITIONS, axes.EMBED))
        else:
            self.encoder_bias = logical_param(self, "encoder_relative_bias", nn.initializers.normal(0.1),
                                              (cfg.relative_buckets, cfg.heads), (axes.RELATIVE, None))
            self.decoder_bias = logical_param(self, "decoder_relative_bias", nn.initializers.normal(0.1),
                                              (cfg.relative_buckets, cfg.heads), (axes.RELATIVE, None))
        self.encoder_blocks = [EncoderBlock(cfg, name=f"encoder_{i}") for i in range(cfg.encoder_blocks)]
        self.decoder_blocks = [DecoderBlock(cfg, name=f"decoder_{i}") for i in range(cfg.decoder_blocks)]
        self.encoder_norm = Norm(cfg.norm, name="encoder_norm")
        self.decoder_norm = Norm(cfg.norm, name="decoder_norm")
        self.dropout = RowDropout(cfg.dropout)

    def _bias(self, table: jax.Array, length: int, bidirectional: bool) -> jax.Array:
        cfg = self.config
        buckets = relative_buckets(length, length, bidirectional, cfg.relative_buckets, cfg.relative_max_distance)
        return jnp.transpose(table[buckets], (2, 0, 1))  # (H, length, length)

    def encode(self, tokens: jax.Array, deterministic: bool, rows: jax.Array | None = None) -> jax.Array:
        """(B, S) ids -> (B, S, D) memory (padding rows are masked by callers). rows (B,): each
        sequence's example id, from which its dropout masks are drawn (training only)."""
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        with jax.named_scope(EMBEDDING_SCOPE):
            x = jnp.take(self.table, tokens, axis=0)
        bias = None
        if cfg.positions == "learned":
            x = x + self.encoder_positions[None, : tokens.shape[1]]
        else:
            bias = self._bias(self.encoder_bias, tokens.shape[1], bidirectional=True)
        real = tokens != PAD
        mask = (real[:, None, :] & real[:, :, None])[:, None]  # (B, 1, S, S)
        x = self.dropout(x.astype(dtype), rows, deterministic=deterministic)
        for block in self.encoder_blocks:
            x = block(x, mask, bias, deterministic, rows)
        return self.dropout(self.encoder_norm(x), rows, deterministic=deterministic)

    def decode(self, tokens: jax.Array, memory: jax.Array, memory_real: jax.Array, deterministic: bool,
               group: int = 1, rows: jax.Array | None = None) -> jax.Array:
        """(B, C, T) decoder ids against (B, S, D) memory -> (B, C, T, D) outputs. group: the
        consecutive (B, C) sequences a mixture-of-experts feed-forward routes together."""
        cfg = self.config
        length = tokens.shape[-1]
        with jax.named_scope(EMBEDDING_SCOPE):
            x = jnp.take(self.table, tokens, axis=0)
        bias = None
        if cfg.positions == "learned":
            x = x + self.decoder_positions[:length]
        else:
            bias = self._bias(self.decoder_bias, length, bidirectional=False)
        causal = jnp.tril(jnp.ones((length, length), bool))
        cross_mask = memory_real[:, None, None, None, :]  # (B, 1, 1, 1, S)
        x = self.dropout(x.astype(memory.dtype), rows, deterministic=deterministic)
        real = tokens[..., 1] != PAD  # (B, C): sequences of a real item (padding targets are all PAD)
        for block in self.decoder_blocks:
            x = block(x, memory, causal, cross_mask, bias, deterministic, real, group, rows)
        return self.dropout(self.decoder_norm(x), rows, deterministic=deterministic)

    def level_logits(self, outputs: jax.Array) -> jax.Array:
        """(..., T, D) decoder outputs -> (..., T, K) logits, position j over level j's K tokens
        (tied with the token table, scaled by D^-1/2 as T5 does)."""
        cfg = self.config
        k = cfg.ids_codebook
        levels = self.table[SPECIALS : SPECIALS + cfg.id_length * k].reshape(cfg.id_length, k, cfg.d_model)
        return jnp.einsum("...td,tkd->...tk", outputs.astype(jnp.float32), levels) * _readout_scale(cfg)

    def memory_keys_values(self, memory: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Every decoder block's cross-attention keys and values of (B, S, D) memory."""
        return tuple(block.memory_keys_values(memory) for block in self.decoder_blocks)

    def decode_step(self, tokens: jax.Array, position: jax.Array, caches: tuple, memory_kv: tuple,
                    memory_real: jax.Array) -> tuple[jax.Array, tuple]:
        """One decoder position for C sequences per memory row, deterministic: tokens (B, C), the
        ids at `position`; caches: per block (keys, values) (B, C, H, T, E). Returns (B, C, K)
        logits of the next level (position's level) and the updated caches."""
        cfg = self.config
        x = jnp.take(self.table, tokens, axis=0)[:, :, None]  # (B, C, 1, D)
        bias_row = None
        if cfg.positions == "learned":
            x = x + jax.lax.dynamic_index_in_dim(self.decoder_positions, position, keepdims=False)
        else:
            bias = self._bias(self.decoder_bias, cfg.id_length, bidirectional=False)
            bias_row = jax.lax.dynamic_slice_in_dim(bias, position, 1, axis=1)  # (H, 1, T)
        x = x.astype(memory_kv[0][0].dtype)
        cross_mask = memory_real[:, None, None, None, :]
        updated = []
        for block, cache, kv in zip(self.decoder_blocks, caches, memory_kv):
            x, cache = block.step(x, position, cache, kv, cross_mask, bias_row)
            updated.append(cache)
        outputs = self.decoder_norm(x)[:, :, 0]  # (B, C, D)
        k = cfg.ids_codebook
        level = jax.lax.dynamic_slice_in_dim(self.table, SPECIALS + position * k, k, axis=0)  # (K, D)
        logits = jnp.einsum("bcd,kd->bck", outputs.astype(jnp.float32), level) * _readout_scale(cfg)
        return logits, tuple(updated)

    def __call__(self, encoder_tokens: jax.Array, decoder_tokens: jax.Array, deterministic: bool = True,
                 group: int = 1, rows: jax.Array | None = None) -> jax.Array:
        memory = self.encode(encoder_tokens, deterministic, rows)
        outputs = self.decode(decoder_tokens[:, None], memory, encoder_tokens != PAD, deterministic, group, rows)[:, 0]
        return self.level_logits(outputs)


def moe_aux(intermediates: Mapping, config: EncDecConfig) -> dict:
    """The family's aux terms from the routing statistics every MoE layer sowed, averaged over
    layers: the weighted balance loss, and dropped fraction, router entropy, per-expert load."""
    layers = [stats for stats in jax.tree.leaves(intermediates, is_leaf=lambda x: isinstance(x, dict) and "balance" in x)]
    if not layers:
        return {"losses": {}, "metrics": {}}
    mean = {key: sum(layer[key] for layer in layers) / len(layers) for key in layers[0]}
    metrics = {"moe_dropped": mean["dropped"], "moe_entropy": mean["entropy"], "moe_balance": mean["balance"],
               "moe_load_max": jnp.max(mean["load"]) * config.experts,
               **{f"moe_load/{e}": mean["load"][e] for e in range(config.experts)}}
    losses = {"moe_balance_loss": config.balance_loss_weight * mean["balance"]} if config.balance_loss_weight else {}
    return {"losses": losses, "metrics": metrics}


def user_tokens(users: Any, config: EncDecConfig, xp: Any = np) -> Any:
    """The hashed user token of dense user indices (-1 = padding -> PAD). Knuth's multiplicative
    hash mod 2^32, by uint32 arithmetic that wraps the same in numpy and jax.numpy (xp)."""
    users = xp.asarray(users)
    hashed = (users.astype(np.uint32) * np.uint32(2654435761)) % np.uint32(config.user_buckets)
    first = SPECIALS + config.id_length * config.ids_codebook
    return xp.where(users >= 0, first + hashed.astype(np.int32), PAD).astype(np.int32)


def history_windows(items: jax.Array, segment_ids: jax.Array, positions: jax.Array, history: int) -> jax.Array:
    """(B, P, history) items ending at each chosen position (B, P) of its row, from the same
    segment, oldest first; 0 where the segment has no such item."""
    offsets = positions[..., None] - (history - 1) + jnp.arange(history)
    inside = offsets >= 0
    index = jnp.clip(offsets, 0, items.shape[1] - 1)
    picked = jnp.take_along_axis(items[:, None, :], index, axis=2)
    same = jnp.take_along_axis(segment_ids[:, None, :], index, axis=2) == jnp.take_along_axis(
        segment_ids, positions, axis=1)[..., None]
    return jnp.where(inside & same & (picked > 0), picked, 0)
