"""Item co-occurrence of training sequences and its PPMI transform (collaborative item vectors).

Only the sequences the caller passes are read: `training_sequences` gives every user's sequence
without its validation and test targets, so no held-out target can shape the vectors."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from data.sequences import Sequences
from data.split import leave_one_out


def training_sequences(sequences: Sequences) -> Sequences:
    """Every user's sequence minus its last two interactions (the validation and test targets)."""
    return leave_one_out(sequences, "holdout").train


def cooccurrence_counts(sequences: Sequences, window: int) -> sp.csr_matrix:
    """(items, items) symmetric counts of two items within `window` positions of each other in
    one user's sequence (row i - 1 = dense item i); the diagonal is zero."""
    n = sequences.num_items
    user = np.repeat(np.arange(sequences.num_users), sequences.lengths)
    items = sequences.items.astype(np.int64) - 1
    counts = sp.csr_matrix((n, n), dtype=np.float64)
    for gap in range(1, window + 1):
        same_user = user[:-gap] == user[gap:]
        a, b = items[:-gap][same_user], items[gap:][same_user]
        distinct = a != b
        a, b = a[distinct], b[distinct]
        pairs = sp.csr_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
        counts = counts + pairs + pairs.T
    return counts


def ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Positive pointwise mutual information: max(0, ln(c_ij N / (c_i c_j)))."""
    counts = sp.coo_matrix(counts)
    total = counts.data.sum()
    if total == 0:
        return sp.csr_matrix(counts.shape)
    marginal = np.asarray(counts.sum(1)).ravel()
    values = np.log(counts.data * total / (marginal[counts.row] * marginal[counts.col]))
    keep = values > 0
    return sp.csr_matrix((values[keep], (counts.row[keep], counts.col[keep])), shape=counts.shape)
