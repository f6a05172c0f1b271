"""Analytic FLOP counts of a training step (../shared/specs/flops_mfu.md).

Two numbers, kept apart:
- model FLOPs (the MFU numerator): matmuls of the model's math on real tokens only, causal
  attention counted as half the square (n^2 / 2 per segment of n tokens), embedding lookups
  free, the scoring matmul counted (sampled softmax 2 D (1 + R) per supervised position, full
  softmax 2 D V), forward x 3 for forward + backward, rematerialisation not counted;
- executed FLOPs: the matmuls the compiled step really runs: every row position, the attention
  tiles it computes (masked pairs included), the scoring matmul as implemented. This is what
  XLA's cost_analysis counts for dot operations, and what tests compare to it.
"""

from __future__ import annotations

import numpy as np

from models.attention import causal_query_blocks
from models.config import ModelConfig

FLOP_CONVENTION = "v1: matmul-only, causal attention n^2/2, padding excluded, fwd x3"
TRAIN_MULTIPLIER = 3  # backward = 2 x forward for every matmul


def _block_linear_flops_per_token(model: ModelConfig) -> float:
    """Forward matmul FLOPs per token of one block, attention excluded."""
    d, h = model.d_model, model.heads
    if model.family == "hstu":
        return 2.0 * d * (2 * h * model.head_dim_v + 2 * h * model.head_dim_qk) + 2.0 * h * model.head_dim_v * d
    return 2.0 * d * 3 * d + 2.0 * d * d + 2.0 * 2 * d * model.ffn_width


def _attention_flops_per_query_key(model: ModelConfig) -> float:
    """Forward FLOPs of one (query, key) pair of one block: QK^T and AV over all heads."""
    if model.family == "hstu":
        return 2.0 * model.heads * (model.head_dim_qk + model.head_dim_v)
    return 2.0 * 2 * model.d_model


def scoring_flops_per_position(model: ModelConfig, loss: str, negatives: int, num_items: int) -> float:
    return 2.0 * model.d_model * (num_items if loss == "full_softmax" else 1 + negatives)


def non_embedding_params(model: ModelConfig) -> int:
    """Parameters outside the item and position tables (the Kaplan N)."""
    d, h = model.d_model, model.heads
    if model.family == "hstu":
        per_block = d * (2 * h * model.head_dim_v + 2 * h * model.head_dim_qk) + h * model.head_dim_v * d + d
        per_block += (2 * model.max_positions - 1) + (model.time_buckets + 1)
        return model.blocks * per_block
    f = model.ffn_width
    per_block = 3 * d * d + 3 * d + d * d + d + d * f + f + f * d + d  # LayerNorms have no parameters
    return model.blocks * per_block


def model_flops_from_counts(model: ModelConfig, tokens: float, squared_lengths: float, supervised: float, loss: str,
                            negatives: int, num_items: int) -> float:
    """Training model FLOPs from a batch's real tokens, sum over segments of n^2, and supervised
    positions (the counts the train step returns, so no per-step host work is needed)."""
    forward = model.blocks * (_block_linear_flops_per_token(model) * tokens
                              + _attention_flops_per_query_key(model) * squared_lengths / 2.0)
    forward += scoring_flops_per_position(model, loss, negatives, num_items) * supervised
    return TRAIN_MULTIPLIER * float(forward)


def model_flops(model: ModelConfig, segment_lengths: np.ndarray, loss: str, negatives: int, num_items: int,
                supervised_positions: int | None = None) -> float:
    """Training model FLOPs for segments of the given real lengths (each predicts n - 1 targets)."""
    n = np.asarray(segment_lengths, dtype=np.float64)
    supervised = float(np.sum(np.maximum(n - 1, 0))) if supervised_positions is None else float(supervised_positions)
    return model_flops_from_counts(model, float(n.sum()), float(np.sum(n * n)), supervised, loss, negatives, num_items)


def _reduction_products_per_token(model: ModelConfig) -> float:
    """Training FLOPs per token of the matrix-vector products that stand in for XLA:CPU's slow
    reductions (models/layers.py): a LayerNorm of width w takes 4 row means of 2 w FLOPs (2 in
    the forward, 2 in its hand-written backward); HSTU's output-bias gradient is one of 2 D."""
    if model.family == "hstu":
        return model.blocks * (8.0 * model.d_model + 8.0 * model.heads * model.head_dim_v + 2.0 * model.d_model)
    return model.blocks * 16.0 * model.d_model


def executed_flops(model: ModelConfig, rows: int, row_len: int, loss: str, negatives: int, num_items: int,
                   score_all_items: bool) -> float:
    """Matmul FLOPs the compiled training step executes on a (rows, row_len) batch: every
    position, the attention square (dense: the tiles of its causal query blocks; HSTU blockwise:
    its (block x block) tiles on and below the diagonal, padded to whole blocks, and their forward
    run again in the rematerialised backward), the scoring as implemented, and the
    matrix-vector products of models/layers.py (for HSTU's position bias: 2 H per query-key pair)."""
    tokens = float(rows * row_len)
    pairs_per_row = float(row_len * row_len)
    attention_passes = TRAIN_MULTIPLIER
    if model.family == "hstu" and model.attention == "blockwise":
        blocks = -(-row_len // model.attention_block)
        pairs_per_row = float(model.attention_block**2 * blocks * (blocks + 1) // 2)  # the tiles on and below the diagonal
        attention_passes = TRAIN_MULTIPLIER + 1
    else:
        pairs_per_row = float(sum((end - start) * end for start, end in causal_query_blocks(row_len, model.causal_splits)))
    pairs = rows * pairs_per_row
    forward = model.blocks * _block_linear_flops_per_token(model) * tokens
    if loss == "full_softmax" or score_all_items:
        forward += 2.0 * model.d_model * (num_items + 1) * tokens
    else:
        forward += 2.0 * model.d_model * (1 + negatives) * tokens
    executed = TRAIN_MULTIPLIER * forward + _reduction_products_per_token(model) * tokens
    executed += attention_passes * model.blocks * _attention_flops_per_query_key(model) * pairs
    if model.family == "hstu":
        executed += model.blocks * 2.0 * model.heads * pairs  # the position-bias gradient
    return executed


def six_n_d(params_non_embedding: int, tokens: float) -> float:
    """The Kaplan/Chinchilla shorthand C = 6 N D, stored beside the detailed count."""
    return 6.0 * params_non_embedding * tokens
