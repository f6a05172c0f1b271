"""FLOP counts of a training step, through the model families: the lab's convention, stated here.

In the field: Kaplan et al. 2020 count C ~ 6 N D (training = 3 x forward, non-embedding N);
PaLM's appendix B (Chowdhery et al. 2022) defines MFU as observed tokens/s x model FLOPs per token
/ peak FLOP/s, attention not halved, rematerialisation not counted; MaxText halves causal
attention. A lab must state its own convention and keep it; this one:

Two numbers, kept apart:
- model FLOPs (the MFU numerator): matmuls of the model's math on real tokens only, causal
  attention counted as half the square (n^2 / 2 per segment of n tokens), embedding lookups
  free, the scoring matmul counted, forward x 3 for forward + backward, rematerialisation not
  counted; each family computes it from the counts its train step returns;
- executed FLOPs: the matmuls the compiled step really runs (every row position, the attention
  tiles computed, masked pairs included, the scoring as implemented). This is what XLA's
  cost_analysis counts for dot operations, and what tests compare to it.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from models.core import family as families
from models.core.family import TRAIN_MULTIPLIER, FamilyConfig
from scaling.config import TrainConfig

__all__ = ["FLOP_CONVENTION", "TRAIN_MULTIPLIER", "executed_flops", "model_flops", "model_flops_from_counts",
           "non_embedding_params", "param_counts", "six_n_d"]

FLOP_CONVENTION = "v1: matmul-only, causal attention n^2/2, padding excluded, fwd x3"


def _train(loss: str, negatives: int) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), loss=loss, negatives=negatives)


def model_flops_from_counts(model: FamilyConfig, train: TrainConfig, counts: Mapping[str, float],
                            num_items: int) -> float:
    """Training model FLOPs of one step from the counts its train step returned."""
    return families.of(model).model_flops(model, train, counts, num_items)


def model_flops(model: FamilyConfig, segment_lengths: np.ndarray, loss: str, negatives: int, num_items: int,
                supervised_positions: int | None = None) -> float:
    """Training model FLOPs for pipeline rows holding segments of these real lengths (each
    predicts n - 1 targets unless supervised_positions says otherwise)."""
    n = np.asarray(segment_lengths, dtype=np.float64)
    supervised = float(np.sum(np.maximum(n - 1, 0))) if supervised_positions is None else float(supervised_positions)
    counts = {"tokens": float(n.sum()), "squared_lengths": float(np.sum(n * n)), "positions": supervised}
    return model_flops_from_counts(model, _train(loss, negatives), counts, num_items)


def executed_flops(model: FamilyConfig, rows: int, row_len: int, loss: str, negatives: int, num_items: int,
                   train: TrainConfig | None = None) -> float | None:
    """Matmul FLOPs the compiled train step executes on a (rows, row_len) batch (None when the
    family does not count them). train: the trial's train section (its negative sampler and
    table optimizer decide how the loss scores), else a default one with this loss and negatives."""
    train = dataclasses.replace(train, loss=loss, negatives=negatives) if train else _train(loss, negatives)
    return families.of(model).executed_flops(model, train, rows, row_len, num_items)


def param_counts(model: FamilyConfig, num_items: int) -> dict[str, int]:
    """{"params", "params_non_embedding", "params_active"} of the family's analytic count."""
    return families.of(model).param_counts(model, num_items)


def non_embedding_params(model: FamilyConfig) -> int:
    """Parameters outside the tables whose rows grow with the catalogue or positions (the Kaplan N)."""
    return param_counts(model, 0)["params_non_embedding"]


def six_n_d(params_non_embedding: int, tokens: float) -> float:
    """The Kaplan/Chinchilla shorthand C = 6 N D, stored beside the detailed count."""
    return 6.0 * params_non_embedding * tokens
