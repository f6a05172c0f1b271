"""Hyper-parameters of the decoder-only models (HSTU, SASRec): one frozen dataclass."""

from __future__ import annotations

import dataclasses
from typing import Literal

ModelFamily = Literal["hstu", "sasrec"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """family: "hstu" or "sasrec". d_model = D; blocks; heads = H; dqk / dv: per-head widths
    (0 -> d_model // heads). max_positions: rows of the positional table (the spec's N).
    attention_divisor: HSTU's constant N in SiLU(QK + rab) / N (0 -> max_positions).
    dropout: the block output dropout; input_dropout: dropout on the input embeddings.
    ffn_dim: SASRec's feed-forward hidden width (0 -> d_model). time_buckets: HSTU's
    log-time buckets (the spec's 128; the table has time_buckets + 1 entries).
    compute_dtype: "float32" or "bfloat16" (parameters stay float32).
    attention: HSTU's "dense" (B, H, L, L) attention, or "blockwise": attention_block queries at
    a time, rematerialised in the backward pass, memory linear in L (models/attention.py).
    causal_splits: attention (HSTU dense, SASRec) in query blocks, each computed against the keys
    up to its end only (1 = the whole L x L square; 2 skips the all-masked upper-right quarter).
    """

    family: ModelFamily = "hstu"
    d_model: int = 50
    blocks: int = 2
    heads: int = 1
    dqk: int = 0
    dv: int = 0
    max_positions: int = 211
    attention_divisor: int = 0
    dropout: float = 0.2
    input_dropout: float = 0.2
    ffn_dim: int = 0
    ffn_activation: Literal["relu", "gelu"] = "relu"
    time_buckets: int = 128
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    attention: Literal["dense", "blockwise"] = "dense"
    attention_block: int = 256
    causal_splits: int = 2

    @property
    def head_dim_qk(self) -> int:
        return self.dqk or self.d_model // self.heads

    @property
    def head_dim_v(self) -> int:
        return self.dv or self.d_model // self.heads

    @property
    def divisor(self) -> int:
        return self.attention_divisor or self.max_positions

    @property
    def ffn_width(self) -> int:
        return self.ffn_dim or self.d_model

    def validate(self) -> None:
        """Raise ValueError naming the field when a value cannot work."""
        positive = ("d_model", "blocks", "heads", "max_positions", "time_buckets", "attention_block", "causal_splits")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}={getattr(self, name)} must be >= 1")
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be in [0, 1)")
        if self.family not in ("hstu", "sasrec"):
            raise ValueError(f"model.family={self.family!r}; known: hstu, sasrec")
        if self.family == "sasrec" and self.d_model % self.heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.heads={self.heads}")
        if self.family == "hstu" and not (self.dqk and self.dv) and self.d_model % self.heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.heads={self.heads}; set dqk and dv")
        if self.attention not in ("dense", "blockwise") or (self.attention == "blockwise" and self.family != "hstu"):
            raise ValueError(f"model.attention={self.attention!r}; known: dense, blockwise (hstu only)")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.compute_dtype={self.compute_dtype!r}; known: float32, bfloat16")
