"""Quality of a semantic-ID set, judged without training a generator.

collision_rate: (N - distinct L-tuples) / N before the collision code; largest_collision_group;
utilization[l]: fraction of level l's K codewords used; entropy[l]: entropy (bits) of level l's code
distribution (log2 K at most); recon_error: sum ||x - x_hat||^2 / sum ||x||^2; prefix lifts: how
much more often two items with the same first code share a genre (or co-occur in a training
window) than two random items do (1 = no better than chance).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

EXACT_PAIRS_UP_TO = 3000  # items; beyond this the genre lift samples pairs
SAMPLED_PAIRS = 200_000
COMMON_LABEL = 0.5  # labels on more than this fraction of the items (a top-level category) are dropped


def tuple_groups(codes: np.ndarray) -> np.ndarray:
    """Group index per item: items with the same code tuple share one."""
    _, group = np.unique(codes, axis=0, return_inverse=True)
    return group.reshape(-1)


def collisions(codes: np.ndarray) -> dict:
    group = tuple_groups(codes)
    sizes = np.bincount(group)
    return {"collision_rate": float((len(codes) - len(sizes)) / len(codes)),
            "largest_collision_group": int(sizes.max())}


def level_usage(codes: np.ndarray, k: int) -> dict:
    utilization, entropy = [], []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=k)
        p = counts[counts > 0] / counts.sum()
        utilization.append(float(np.count_nonzero(counts) / k))
        entropy.append(float(-np.sum(p * np.log2(p))))
    return {"utilization": utilization, "entropy": entropy}


def _pairs_within(groups: np.ndarray) -> float:
    sizes = np.bincount(groups).astype(np.float64)
    return float(np.sum(sizes * (sizes - 1) / 2))


def cooccurrence_lift(first_codes: np.ndarray, linked: sp.spmatrix) -> float | None:
    """P(linked | same first code) / P(linked) over unordered pairs of distinct items; `linked`
    is a symmetric (items, items) matrix whose non-zeros off the diagonal mark linked pairs."""
    n = len(first_codes)
    linked = sp.coo_matrix(linked)
    off = linked.row < linked.col
    rows, cols = linked.row[off], linked.col[off]
    all_pairs = n * (n - 1) / 2
    same_pairs = _pairs_within(first_codes)
    if len(rows) == 0 or same_pairs == 0:
        return None
    p_all = len(rows) / all_pairs
    p_same = np.count_nonzero(first_codes[rows] == first_codes[cols]) / same_pairs
    return float(p_same / p_all)


def label_lift(first_codes: np.ndarray, labels: sp.csr_matrix, seed: int = 0) -> float | None:
    """P(share a label | same first code) / P(share a label) over unordered pairs of distinct items;
    labels carried by more than COMMON_LABEL of the items are dropped (every pair would share
    them). Exact up to EXACT_PAIRS_UP_TO items, else estimated from SAMPLED_PAIRS uniform pairs of
    each kind."""
    n = len(first_codes)
    labels = sp.csr_matrix(labels, dtype=np.float64)
    labels = labels[:, np.flatnonzero(np.asarray((labels > 0).sum(0)).ravel() <= COMMON_LABEL * n)]
    if n < 2 or labels.nnz == 0 or _pairs_within(first_codes) == 0:
        return None
    if n <= EXACT_PAIRS_UP_TO:
        shared = (labels @ labels.T).tocoo()
        off = shared.row < shared.col
        rows, cols = shared.row[off], shared.col[off]
        p_all = len(rows) / (n * (n - 1) / 2)
        p_same = np.count_nonzero(first_codes[rows] == first_codes[cols]) / _pairs_within(first_codes)
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, SAMPLED_PAIRS)
        b = (a + rng.integers(1, n, SAMPLED_PAIRS)) % n  # uniform over the other items
        p_all = _share(labels, a, b)
        p_same = _share(labels, *_pairs_in_groups(first_codes, SAMPLED_PAIRS, rng))
    return None if p_all == 0 else float(p_same / p_all)


def _pairs_in_groups(groups: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` pairs drawn uniformly from all unordered pairs of distinct items in one group: a
    group with probability proportional to its number of pairs, then two distinct members."""
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pairs = sizes * (sizes - 1) / 2.0
    group = rng.choice(len(sizes), count, p=pairs / pairs.sum())
    first = rng.integers(0, sizes[group])
    second = (first + rng.integers(1, sizes[group])) % sizes[group]
    return order[starts[group] + first], order[starts[group] + second]


def _share(labels: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels[a].multiply(labels[b]).sum(1)).ravel() > 0))
