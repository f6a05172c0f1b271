"""Per-user interaction sequences in a ragged layout, and the preprocessing that builds them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from data.errors import DataError
from data.interactions import Interactions

if TYPE_CHECKING:
    import pandas as pd



@dataclasses.dataclass(frozen=True, eq=False)
class Sequences:
    """Users' chronological item sequences, concatenated.

    User u's items are items[offsets[u]:offsets[u + 1]] (dense ids 1..num_items), with the same
    slice of timestamps (int64 seconds) and ratings (float32, or None). user_ids[u] is u's original
    id; item_ids[i - 1] is dense item i's original id.
    """

    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray | None
    num_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.num_users

    def length(self, user: int) -> int:
        """One user's number of interactions (per-row code: `lengths` builds the whole array)."""
        return int(self.offsets[user + 1] - self.offsets[user])

    def user_items(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def user_timestamps(self, user: int) -> np.ndarray:
        return self.timestamps[self.offsets[user] : self.offsets[user + 1]]

    def drop_last(self, count: int) -> "Sequences":
        """Every user's sequence without its last `count` interactions."""
        lengths = self.lengths
        if count and np.any(lengths < count):
            raise DataError(f"cannot drop {count} interactions from users with fewer")
        keep = position_in_sequence(self.offsets) < np.repeat(lengths - count, lengths)
        return self._with_rows(keep, lengths - count)

    def last(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and timestamps of each user's `count`-th interaction from the end (1 = last)."""
        index = self.offsets[1:] - count
        if np.any(index < self.offsets[:-1]):
            raise DataError(f"some users have fewer than {count} interactions")
        return self.items[index], self.timestamps[index]

    def select_users(self, users: np.ndarray) -> "Sequences":
        """The sequences of the users at indices `users`, in that order."""
        lengths = self.lengths[users]
        rows = np.repeat(self.offsets[:-1][users], lengths) + position_in_sequence(_offsets_from(lengths))
        return dataclasses.replace(
            self,
            offsets=_offsets_from(lengths),
            items=self.items[rows],
            timestamps=self.timestamps[rows],
            ratings=None if self.ratings is None else self.ratings[rows],
            user_ids=self.user_ids[users],
        )

    def _with_rows(self, keep: np.ndarray, lengths: np.ndarray) -> "Sequences":
        return dataclasses.replace(
            self,
            offsets=_offsets_from(lengths),
            items=self.items[keep],
            timestamps=self.timestamps[keep],
            ratings=None if self.ratings is None else self.ratings[keep],
        )


def position_in_sequence(offsets: np.ndarray) -> np.ndarray:
    """For every element of a ragged array, its 0-based index within its own row."""
    lengths = np.diff(offsets)
    return np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)


def _offsets_from(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
    """user_core / item_core: k-core thresholds (0 = off), iterated to a fixed point.

    min_user_interactions: users with fewer are dropped after k-core (a leave-one-out split with
    a validation target needs 3).
    """

    user_core: int = 0
    item_core: int = 0
    min_user_interactions: int = 3


def k_core(interactions: Interactions, user_core: int, item_core: int) -> np.ndarray:
    """Boolean mask of the rows that survive iterated k-core filtering (a fixed point)."""
    _, user_index = np.unique(interactions.user, return_inverse=True)
    _, item_index = np.unique(interactions.item, return_inverse=True)
    keep = np.ones(len(interactions), dtype=bool)
    while True:
        user_counts = np.bincount(user_index[keep], minlength=user_index.max(initial=-1) + 1)
        item_counts = np.bincount(item_index[keep], minlength=item_index.max(initial=-1) + 1)
        new_keep = keep & (user_counts[user_index] >= user_core) & (item_counts[item_index] >= item_core)
        if np.array_equal(new_keep, keep):
            return keep
        keep = new_keep


def _plain_ids(ids: np.ndarray) -> np.ndarray:
    """Ids as int64 (when every id is a decimal integer) or fixed-width unicode, no pickling."""
    if ids.dtype.kind not in "OU":
        return ids
    text = ids.astype(str)
    if text.size and np.all(np.char.isdigit(text)) and np.char.str_len(text).max() <= 18:
        return text.astype(np.int64)
    return text


def build_sequences(interactions: Interactions, options: PreprocessOptions) -> tuple[Sequences, dict]:
    """Filter, remap to dense ids and sort each user's interactions by time.

    Ties in time keep source-file order (a stable sort). Returns the sequences and a report of
    what each step removed.
    """
    report = {"interactions_read": len(interactions)}
    if len(interactions) == 0:
        raise DataError(f"{interactions.source}: no interactions")
    if options.user_core or options.item_core:
        interactions = interactions.take(k_core(interactions, options.user_core, options.item_core))
        report["removed_by_k_core"] = report["interactions_read"] - len(interactions)
        if len(interactions) == 0:
            raise DataError(
                f"{interactions.source}: k-core filtering (user_core={options.user_core}, "
                f"item_core={options.item_core}) removed every interaction"
            )
    user_ids, user_index = np.unique(_plain_ids(interactions.user), return_inverse=True)
    if options.min_user_interactions > 1:
        counts = np.bincount(user_index)
        keep = counts[user_index] >= options.min_user_interactions
        report["users_below_min_interactions"] = int(np.sum(counts < options.min_user_interactions))
        if not keep.all():
            interactions = interactions.take(keep)
            if len(interactions) == 0:
                raise DataError(
                    f"{interactions.source}: no user has min_user_interactions="
                    f"{options.min_user_interactions} interactions"
                )
            user_ids, user_index = np.unique(_plain_ids(interactions.user), return_inverse=True)
    item_ids, item_index = np.unique(_plain_ids(interactions.item), return_inverse=True)
    order = np.argsort(interactions.timestamp, kind="stable")
    order = order[np.argsort(user_index[order], kind="stable")]
    lengths = np.bincount(user_index, minlength=len(user_ids))
    sequences = Sequences(
        offsets=_offsets_from(lengths),
        items=(item_index[order] + 1).astype(np.int32),
        timestamps=interactions.timestamp[order],
        ratings=None if interactions.rating is None else interactions.rating[order].astype(np.float32),
        num_items=len(item_ids),
        user_ids=user_ids,
        item_ids=item_ids,
    )
    report.update(users=sequences.num_users, items=sequences.num_items, interactions=int(lengths.sum()))
    return sequences, report


def item_metadata_in_dense_order(sequences: Sequences, metadata: pd.DataFrame | None) -> pd.DataFrame | None:
    """Metadata rows aligned with dense item ids (row i-1 = dense item i); missing items get NaN."""
    if metadata is None:
        return None
    table = metadata.drop_duplicates("item").set_index("item")
    key = sequences.item_ids
    if table.index.dtype != key.dtype:
        table.index = table.index.astype(str)
        key = key.astype(str)
    return table.reindex(key).reset_index()
