"""The popularity baseline: the floor every model must beat, under the full-ranking protocol."""

from __future__ import annotations

import numpy as np

from data.ranking import DEFAULT_KS, ranking_metrics
from data.sequences import position_in_sequence
from data.split import EvalTargets, LeaveOneOut


def popularity_counts(split: LeaveOneOut) -> np.ndarray:
    """Interaction count of every dense item (index 0 = padding, count 0) in the training sequences."""
    return np.bincount(split.train.items, minlength=split.train.num_items + 1).astype(np.int64)


def popularity_ranks(counts: np.ndarray, targets: EvalTargets, max_len: int) -> np.ndarray:
    """Each target's rank when every item is scored by its count, the (truncated) history excluded.

    rank = 1 + #candidates with a strictly higher count; candidates are all items except those
    in the user's most recent max_len history items (the target is never excluded).
    """
    item_counts = counts[1:]
    sorted_counts = np.sort(item_counts)
    target_counts = counts[targets.targets]
    higher_overall = len(sorted_counts) - np.searchsorted(sorted_counts, target_counts, side="right")
    history = targets.history
    lengths = history.lengths
    in_window = position_in_sequence(history.offsets) >= np.repeat(lengths - max_len, lengths)
    owner = np.repeat(np.arange(len(lengths)), lengths)
    seen_items = history.items[in_window]
    seen_owner = owner[in_window]
    # Each distinct (user, item) pair excluded once, and never the target itself.
    pairs = np.unique(seen_owner.astype(np.int64) * (counts.size + 1) + seen_items)
    pair_owner, pair_item = pairs // (counts.size + 1), pairs % (counts.size + 1)
    excluded_higher = (counts[pair_item] > target_counts[pair_owner]) & (pair_item != targets.targets[pair_owner])
    higher_excluded = np.bincount(pair_owner[excluded_higher], minlength=len(lengths))
    return 1 + higher_overall - higher_excluded


def popularity_baseline(split: LeaveOneOut, max_len: int = 200, ks=DEFAULT_KS) -> dict[str, dict[str, float]]:
    """Validation and test metrics of the popularity ranking."""
    counts = popularity_counts(split)
    return {
        "valid": ranking_metrics(popularity_ranks(counts, split.valid, max_len), ks),
        "test": ranking_metrics(popularity_ranks(counts, split.test, max_len), ks),
    }
