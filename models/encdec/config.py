"""The encoder-decoder family's config (TIGER: Rajput et al., NeurIPS 2023, arXiv 2305.05065; OneRec's
mixture-of-experts decoder, arXiv 2502.18965): items are generated as their L + 1 codes (L residual
levels + the collision code).

Vocabulary (one tied table, D wide): 0 PAD, 1 BOS, then (L + 1) ranges of K codes (level j owns
[2 + j K, 2 + (j + 1) K); the collision code has K values too, as in TIGER), then U hashed user
tokens. Every level, the collision level included, owns K = ids_codebook tokens, so sizes and
FLOPs follow from the config alone; IDs whose largest collision group exceeds K are refused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from config.fields import ConfigError, constrained, fraction, non_negative, positive
from models.core.family import FamilyConfig

PAD, BOS, SPECIALS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class EncDecConfig(FamilyConfig):
    """d_model = D; heads x head_dim (0: D / heads) = A; d_ff = F; encoder_blocks, decoder_blocks;
    norm: pre-norm kind; positions: T5 relative buckets (relative_buckets, relative_max_distance) or
    learned tables; history_items = H; targets_per_row: examples per training row (0 = every
    position); user_buckets = U hashed user tokens; score_chunk: items per chunk of the exact
    scorer. ids: a semantic-ID artefact (python -m data semantic-ids, .npz) or IDs as JSON
    ({item: [c1, ..., cL]}, used as given); empty = built from the ids_* fields (cached), so the
    tokenizer is a sweep axis like d_model. ids_collision_code: the (L + 1)-th code that makes
    repeated L-tuples distinct; off only for IDs given distinct (JSON IDs of L full levels).
    experts > 0: the decoder's feed-forward is a mixture of that many experts (models/encdec/moe.py) of expert_d_ff
    hidden units, top_k routed, capacity_factor, balance_loss_weight x the Switch loss. beam_width: beams of
    the evaluation's beam search beside the exact scorer (0 = none); beam_items: the items it
    returns (may exceed the beams); beam_constrained: decode only IDs of items (the trie).
    exact_scorer: false ranks by the beam alone (metrics at K <= beam_items, no eval loss), for
    catalogues too large to decode every item for every user."""

    family: Literal["encdec"] = "encdec"
    d_model: int = positive(64)
    heads: int = positive(4)
    head_dim: int = non_negative(0, ">= 0 (0 = d_model / heads)")
    encoder_blocks: int = positive(2)
    decoder_blocks: int = positive(2)
    d_ff: int = positive(256)
    activation: Literal["relu", "gelu"] = "relu"
    dropout: float = fraction(0.1)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    positions: Literal["relative", "learned"] = "relative"
    relative_buckets: int = positive(32)
    relative_max_distance: int = positive(128)
    history_items: int = positive(20)
    targets_per_row: int = non_negative(0, ">= 0 (0 = every position)")
    user_buckets: int = positive(2000)
    score_chunk: int = positive(256)
    ids: str = ""
    ids_method: Literal["rqkmeans", "rqkmeans-balanced", "rqvae"] = "rqkmeans-balanced"
    ids_levels: int = positive(3)
    ids_codebook: int = positive(64)
    ids_source: str = "metadata+cooccurrence"
    ids_seed: int = non_negative(0)
    ids_collision_code: bool = True
    beam_width: int = non_negative(20, ">= 0 (0 = exact scoring only)")
    beam_items: int = positive(10)
    beam_constrained: bool = True
    exact_scorer: bool = True
    experts: int = non_negative(0, ">= 0 (0 = a dense decoder feed-forward)")
    top_k: int = constrained(1, lambda v: v in (1, 2), "1 or 2")
    capacity_factor: float = constrained(1.25, lambda v: math.isfinite(v) and v > 0, "finite and > 0")
    expert_d_ff: int = non_negative(0, ">= 0 (0 = d_ff)")
    balance_loss_weight: float = constrained(0.01, lambda v: math.isfinite(v) and v >= 0, "finite and >= 0")

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.heads

    @property
    def width(self) -> int:
        return self.heads * self.attention_head_dim

    @property
    def id_length(self) -> int:
        return self.ids_levels + int(self.ids_collision_code)

    @property
    def encoder_length(self) -> int:
        return 1 + self.history_items * self.id_length

    @property
    def vocab_size(self) -> int:
        return SPECIALS + self.id_length * self.ids_codebook + self.user_buckets

    def check(self) -> None:
        if not self.head_dim and self.d_model % self.heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.heads={self.heads} "
                              f"(or set model.head_dim)")
        if self.experts and self.top_k > self.experts:
            raise ConfigError(f"model.top_k={self.top_k} is more than model.experts={self.experts}")
        if self.ids_codebook < 2:
            raise ConfigError(f"model.ids_codebook={self.ids_codebook} must be at least 2")
        if not self.exact_scorer and not self.beam_width:
            raise ConfigError("model.exact_scorer=false ranks by the beam alone: set model.beam_width > 0")
        if self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 4:
            raise ConfigError("model.relative_buckets must be >= 4 and relative_max_distance > relative_buckets / 4")
