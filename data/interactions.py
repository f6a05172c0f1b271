"""The canonical interaction table every reader produces."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping

import numpy as np

from data.errors import DataError

if TYPE_CHECKING:  # pandas is the readers': a training process, which reads prepared arrays, never imports it
    import pandas as pd


@dataclasses.dataclass(frozen=True, eq=False)
class Interactions:
    """One row per interaction, in source-file order (the order decides ties in time).

    user, item: original ids as read (int64 or str); timestamp: int64 seconds since the epoch;
    rating: float32, or None when the source has none. item_metadata: one row per item with an
    `item` column of original ids plus whatever the source offers (title, genres, year, ...).
    properties: numbers a source knows about itself (e.g. a synthetic source's true entropy).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray | None = None
    item_metadata: pd.DataFrame | None = None
    source: str = ""
    properties: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.user)
        columns = {"item": self.item, "timestamp": self.timestamp}
        if self.rating is not None:
            columns["rating"] = self.rating
        for name, column in columns.items():
            if len(column) != n:
                raise DataError(f"{self.source}: column {name} has {len(column)} rows, user has {n}")
        if self.timestamp.dtype != np.int64:
            raise DataError(f"{self.source}: timestamps must be int64 seconds, got {self.timestamp.dtype}")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_users(self) -> int:
        import pandas as pd

        return len(pd.unique(self.user))

    @property
    def num_items(self) -> int:
        import pandas as pd

        return len(pd.unique(self.item))

    def take(self, rows: np.ndarray) -> "Interactions":
        """The interactions at `rows` (a boolean mask or indices), order kept."""
        return dataclasses.replace(
            self,
            user=self.user[rows],
            item=self.item[rows],
            timestamp=self.timestamp[rows],
            rating=None if self.rating is None else self.rating[rows],
        )
