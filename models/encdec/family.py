"""The encoder-decoder family (`model.family=encdec`): its batch fields, the model built on the
semantic IDs its config asks for, and its FLOP and parameter accounting."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from config.batch import BOOKKEEPING, ROW_FIELDS
from config.fields import ConfigError
from models.core import axes, family
from models.core.family import TRAIN_MULTIPLIER, BatchField, ItemCodes, ItemCodesRequest
from models.encdec.config import EncDecConfig
from models.encdec.model import EncDecModel, synthetic_codes, vocabulary_codes
from models.encdec.moe import capacity
from models.encdec.network import EncDecNetwork, user_tokens

_TOKENS = (axes.BATCH, axes.LENGTH)
TRAIN_FIELDS = {name: BatchField(np.int32, _TOKENS) for name in ("items", "targets", "segment_ids", "positions",
                                                                 "user_tokens")}
EVAL_FIELDS = {**{k: v for k, v in TRAIN_FIELDS.items() if k != "targets"},
               **{name: BatchField(dtype, (axes.BATCH,)) for name, dtype in ROW_FIELDS.items()
                  if name not in BOOKKEEPING}}


class EncDec(family.Family):
    name = "encdec"
    config_class = EncDecConfig

    def build(self, config: EncDecConfig, train: Any, num_items: int) -> EncDecModel:
        """Without data: synthetic distinct IDs (benchmarks and shape-only uses)."""
        codes = synthetic_codes(num_items, config.ids_levels, config.ids_codebook, config.ids_collision_code)
        return EncDecModel(EncDecNetwork(config), config, num_items, vocabulary_codes(codes, config),
                           {"method": "synthetic", "levels": config.ids_levels, "codebook": config.ids_codebook},
                           getattr(train, "exclude_history", True))

    def item_codes_request(self, config: EncDecConfig) -> ItemCodesRequest:
        return ItemCodesRequest(config.ids, config.ids_method, config.ids_levels, config.ids_codebook, config.ids_source,
                                config.ids_seed, config.ids_collision_code,
                                keys={"path": "model.ids", **{field: f"model.ids_{field}" for field in (
                                    "method", "levels", "codebook", "source", "seed", "collision_code")}})

    def build_for(self, config: EncDecConfig, train: Any, num_items: int,
                  item_codes: ItemCodes | None = None) -> EncDecModel:
        if item_codes is None:
            return self.build(config, train, num_items)
        return EncDecModel(EncDecNetwork(config), config, num_items, vocabulary_codes(item_codes.codes, config),
                           dict(item_codes.provenance), getattr(train, "exclude_history", True))

    def train_fields(self, config: EncDecConfig) -> Mapping[str, BatchField]:
        return TRAIN_FIELDS

    def eval_fields(self, config: EncDecConfig) -> Mapping[str, BatchField]:
        return EVAL_FIELDS

    def device_batch(self, config: EncDecConfig, batch: Mapping[str, Any], fields: Mapping[str, BatchField],
                     xp: Any = np) -> dict[str, Any]:
        return super().device_batch(config, {**batch, "user_tokens": user_tokens(batch["users"], config, xp)},
                                    fields, xp)

    def check_data(self, config: EncDecConfig, train: Any, num_items: int) -> None:
        if config.ids_codebook > num_items:
            raise ConfigError(f"model.ids_codebook={config.ids_codebook} is larger than the catalogue ({num_items} items)")

    # ---- accounting -----------------------------------------------------------------------------
    def _per_token(self, config: EncDecConfig) -> dict[str, float]:
        d, a, f = config.d_model, config.width, config.d_ff
        # a mixture of experts counts its router and the top_k experts a token is routed to
        ffn = (config.top_k * 4.0 * d * (config.expert_d_ff or f) + 2.0 * d * config.experts
               if config.experts else 4.0 * d * f)
        return {"encoder": 8.0 * d * a + 4.0 * d * f,  # q, k, v, o; feed-forward in and out
                "decoder": 12.0 * d * a + ffn,  # self q, k, v, o; cross q, o; feed-forward (active)
                "cross_kv": 4.0 * d * a,  # cross-attention keys and values, per encoder token
                "pair": 4.0 * a,  # QK^T and AV of one (query, key) pair, all heads
                "logits": 2.0 * d * config.ids_codebook}

    def model_flops(self, config: EncDecConfig, train: Any, counts: Mapping[str, float], num_items: int) -> float:
        """Matmuls on real tokens: encoder (bidirectional pairs), decoder (causal self-attention as
        T^2 / 2 per example, cross-attention to the real encoder tokens), level logits; x 3."""
        c, t = self._per_token(config), config.id_length
        examples, enc_tokens = counts["examples"], counts["encoder_tokens"]
        forward = config.encoder_blocks * (c["encoder"] * enc_tokens + c["pair"] * counts["encoder_pairs"])
        forward += config.decoder_blocks * (c["decoder"] * examples * t + c["cross_kv"] * enc_tokens
                                            + c["pair"] * (examples * t * t / 2.0 + t * enc_tokens))
        forward += c["logits"] * examples * t
        return TRAIN_MULTIPLIER * float(forward)

    def _executed_decoder_token(self, config: EncDecConfig, group_tokens: int, slots: int) -> float:
        """Dot FLOPs per decoder token of one block as compiled: a mixture of experts runs every
        expert on its C slots of a group of N tokens, and its one-hot dispatch and combine."""
        c = self._per_token(config)
        if not config.experts:
            return c["decoder"]
        d, e, n, k = config.d_model, config.experts, group_tokens, config.top_k
        group = (2.0 * n * d * e + 2 * 2.0 * n * k * e * slots  # router; dispatch and combine weights
                 + 2 * 2.0 * n * e * slots * d  # dispatch and combine
                 + 4.0 * e * slots * d * (config.expert_d_ff or config.d_ff))  # the experts, on every slot
        return 12.0 * d * config.width + group / n

    def executed_flops(self, config: EncDecConfig, train: Any, rows: int, row_len: int, num_items: int) -> float:
        """Every example slot of the compiled step (padding included), full attention squares."""
        c, t, s = self._per_token(config), config.id_length, config.encoder_length
        per_row = config.targets_per_row if 0 < config.targets_per_row < row_len else row_len
        examples = float(rows * per_row)
        decoder = c["decoder"]
        if config.experts:
            decoder = self._executed_decoder_token(
                config, per_row * t, capacity(per_row * t, config.experts, config.top_k, config.capacity_factor))
        forward = config.encoder_blocks * examples * (c["encoder"] * s + c["pair"] * s * s)
        forward += config.decoder_blocks * examples * (decoder * t + c["cross_kv"] * s + c["pair"] * (t * t + t * s))
        forward += c["logits"] * examples * t
        return TRAIN_MULTIPLIER * forward

    def full_row_counts(self, config: EncDecConfig, rows: int, row_len: int) -> dict[str, float]:
        examples = float(rows * (config.targets_per_row if 0 < config.targets_per_row < row_len else row_len - 1))
        lengths = 1.0 + config.id_length * np.minimum(np.arange(1, row_len), config.history_items)
        per_example_tokens = float(np.mean(lengths))
        return {"tokens": examples * (per_example_tokens + config.id_length), "examples": examples,
                "encoder_tokens": examples * per_example_tokens, "encoder_pairs": examples * float(np.mean(lengths**2))}

    def beam_decode_flops(self, config: EncDecConfig, width: int, executed: bool = False) -> float:
        """Forward matmul FLOPs of one user's beam search: the encoder over a full history, the
        cross-attention keys and values once, then `width` beams x T positions of the cached
        decoder (self-attention over the t + 1 positions so far -- executed: over all T cache
        slots, masked -- cross-attention over S) and the K logits of each position's level."""
        c, t, s = self._per_token(config), config.id_length, config.encoder_length
        encoder = config.encoder_blocks * (c["encoder"] * s + c["pair"] * s * s)
        cross_kv = config.decoder_blocks * c["cross_kv"] * s
        token = self._executed_decoder_token(config, 1, 1) if executed else c["decoder"]  # a beam's token routes alone
        steps = sum(config.decoder_blocks * (token + c["pair"] * ((t if executed else position + 1) + s)) + c["logits"]
                    for position in range(t))
        return float(encoder + cross_kv + width * steps)

    def param_counts(self, config: EncDecConfig, num_items: int) -> dict[str, int]:
        d, a, f = config.d_model, config.width, config.d_ff
        norm = d if config.norm == "rmsnorm" else 2 * d
        encoder = config.encoder_blocks * (4 * d * a + 2 * d * f + 2 * norm)
        expert = 2 * d * (config.expert_d_ff or f)
        ffn = config.experts * expert + d * config.experts if config.experts else 2 * d * f  # + the router
        idle = (config.experts - config.top_k) * expert if config.experts else 0  # experts a token skips
        decoder = config.decoder_blocks * (8 * d * a + ffn + 3 * norm)
        positions = 2 * config.relative_buckets * config.heads if config.positions == "relative" else 0
        non_embedding = encoder + decoder + 2 * norm + positions
        tables = config.vocab_size * d + ((config.encoder_length + config.id_length) * d
                                          if config.positions == "learned" else 0)
        total = non_embedding + tables
        return {"params": total, "params_non_embedding": non_embedding,
                "params_active": total - config.decoder_blocks * idle}

    def scores_bytes_per_row(self, config: EncDecConfig, row_len: int) -> float:
        examples = config.targets_per_row if 0 < config.targets_per_row < row_len else row_len
        return examples * config.heads * config.encoder_length**2 * 4.0

    def summary(self, config: EncDecConfig) -> dict[str, Any]:
        return {"d_model": config.d_model, "blocks": config.encoder_blocks + config.decoder_blocks,
                "heads": config.heads, "encoder_blocks": config.encoder_blocks, "decoder_blocks": config.decoder_blocks,
                "ids_levels": config.ids_levels, "ids_codebook": config.ids_codebook, "ids_method": config.ids_method,
                "ids_source": config.ids_source, "beam_width": config.beam_width,
                "beam_constrained": config.beam_constrained, "experts": config.experts, "top_k": config.top_k,
                "capacity_factor": config.capacity_factor, "expert_d_ff": config.expert_d_ff or config.d_ff,
                "decode_flops_per_user": self.beam_decode_flops(config, config.beam_width) if config.beam_width else None}


family.register(EncDec())
