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

EXACT_PAIRS_UP_TO = 20000  # items; beyond this the genre lift samples pairs
SAMPLED_PAIRS = 200_000


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
    """P(share a label | same first code) / P(share a label); exact up to EXACT_PAIRS_UP_TO items,
    else estimated from SAMPLED_PAIRS random pairs of each kind."""
    n = len(first_codes)
    labels = sp.csr_matrix(labels, dtype=np.float64)
    if n < 2 or labels.nnz == 0:
        return None
    if n <= EXACT_PAIRS_UP_TO:
        shared = (labels @ labels.T).tocoo()
        off = shared.row < shared.col
        rows, cols = shared.row[off], shared.col[off]
        p_all = len(rows) / (n * (n - 1) / 2)
        same_pairs = _pairs_within(first_codes)
        if same_pairs == 0 or p_all == 0:
            return None
        return float((np.count_nonzero(first_codes[rows] == first_codes[cols]) / same_pairs) / p_all)
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, SAMPLED_PAIRS), rng.integers(0, n, SAMPLED_PAIRS)
    keep = a != b
    p_all = _share(labels, a[keep], b[keep])
    order = np.argsort(first_codes, kind="stable")
    starts = np.searchsorted(first_codes[order], first_codes[order], side="left")
    ends = np.searchsorted(first_codes[order], first_codes[order], side="right")
    anchor = rng.integers(0, n, SAMPLED_PAIRS)
    size = ends[anchor] - starts[anchor]
    keep = size > 1
    partner = order[starts[anchor] + (rng.random(SAMPLED_PAIRS) * size).astype(np.int64)]
    keep &= partner != order[anchor]
    if p_all == 0 or not keep.any():
        return None
    return float(_share(labels, order[anchor][keep], partner[keep]) / p_all)


def _share(labels: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels[a].multiply(labels[b]).sum(1)).ravel() > 0))
