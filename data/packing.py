"""Training rows: which (user, window) segments share a row, for padded and packed layouts."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class RowPlan:
    """Segments laid out in rows of `capacity` tokens.

    Segment k covers tokens [starts[k], ends[k]) of user users[k]'s sequence and sits in row
    rows[k]; segments of a row are consecutive in these arrays, in their left-to-right order.
    row_offsets[r]:row_offsets[r + 1] are row r's segments.
    """

    users: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    rows: np.ndarray
    row_offsets: np.ndarray
    capacity: int

    @property
    def num_rows(self) -> int:
        return len(self.row_offsets) - 1

    @property
    def real_tokens(self) -> int:
        return int(np.sum(self.ends - self.starts))

    @property
    def padding_fraction(self) -> float:
        total = self.num_rows * self.capacity
        return 1.0 - self.real_tokens / total if total else 0.0


def best_fit_rows(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Row index of each segment: best fit (the fullest row it still fits), in the given order.

    Segments keep their order of arrival inside a row; a new row opens only when no open row has
    room. Each segment must be at most `capacity` long.
    """
    rows = np.empty(len(lengths), dtype=np.int64)
    rows_with_space: list[list[int]] = [[] for _ in range(capacity + 1)]
    space_count = np.zeros(capacity + 1, dtype=np.int64)
    num_rows = 0
    for k, length in enumerate(lengths.tolist()):
        candidates = np.flatnonzero(space_count[length:])
        if len(candidates):
            space = length + int(candidates[0])
            row = rows_with_space[space].pop()
            space_count[space] -= 1
        else:
            space, row = capacity, num_rows
            num_rows += 1
        rows[k] = row
        left = space - length
        if left > 0:
            rows_with_space[left].append(row)
            space_count[left] += 1
    return rows


def plan_rows(users: np.ndarray, starts: np.ndarray, ends: np.ndarray, capacity: int, packed: bool) -> RowPlan:
    """Lay segments out one per row (padded) or several per row by best fit (packed)."""
    if packed:
        row_of_segment = best_fit_rows(ends - starts, capacity)
        order = np.argsort(row_of_segment, kind="stable")
    else:
        row_of_segment = np.arange(len(users), dtype=np.int64)
        order = row_of_segment
    rows = row_of_segment[order]
    counts = np.bincount(rows, minlength=(rows.max(initial=-1) + 1))
    return RowPlan(
        users=users[order],
        starts=starts[order],
        ends=ends[order],
        rows=rows,
        row_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        capacity=capacity,
    )
