"""Full-ranking metrics from target ranks (1 = best), shared by baselines and model evaluation."""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_KS = (5, 10, 50, 200)


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """HR@K, NDCG@K (1[r <= K] / log2(r + 1)) and MRR, averaged over targets."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to average")
    metrics = {}
    for k in ks:
        hit = ranks <= k
        metrics[f"hr@{k}"] = float(np.mean(hit))
        metrics[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)))
    metrics["mrr"] = float(np.mean(1.0 / ranks))
    return metrics


def ranks_from_top_k(top_k: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each row's target in its list of recommended items (best first): 1-based
    position, or infinity when the list misses it. Metrics at K up to the list's length are
    then exact; MRR counts a missed target as 0."""
    top_k = np.asarray(top_k)
    hits = top_k == np.asarray(targets)[:, None]
    first = np.argmax(hits, axis=1).astype(np.float64) + 1.0
    return np.where(hits.any(axis=1), first, np.inf)


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Rank of each row's target among all items: 1 + the number of candidates scored strictly higher.

    scores: (rows, num_items + 1), column 0 = padding (never a candidate). excluded: (rows, L)
    item ids to drop from the candidates (a user's history; 0 entries ignored); the target
    itself is never excluded.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows = np.arange(len(targets))[:, None]
    target_scores = scores[np.arange(len(targets)), targets]
    scores[rows, excluded] = -np.inf
    scores[:, 0] = -np.inf
    return 1 + np.sum(scores > target_scores[:, None], axis=1)
