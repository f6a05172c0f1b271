"""The evaluation a trial reports: the one with the best validation HR@10 (how the published
sequential-recommendation numbers are selected), kept as training goes and in each checkpoint, so
a resumed run selects as an uninterrupted one does (nothing is read back from metrics files)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

SELECTED_BY = "hr@10"  # on the validation targets; ties keep the earlier evaluation


@dataclasses.dataclass
class BestEvaluation:
    step: int | None = None
    valid: dict | None = None
    test: dict | None = None

    def offer(self, step: int, valid: Mapping[str, float], test: Mapping[str, float]) -> None:
        """Keep this evaluation if its validation HR@10 beats the best so far."""
        score = valid.get(SELECTED_BY, -math.inf)
        if self.valid is None or score > self.valid.get(SELECTED_BY, -math.inf):
            self.step, self.valid, self.test = step, dict(valid), dict(test)

    def to_state(self) -> dict[str, Any] | None:
        """JSON for a checkpoint's data state (None before the first evaluation)."""
        return None if self.valid is None else {"step": self.step, "valid": self.valid, "test": self.test}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> "BestEvaluation":
        """From to_state()'s JSON; a checkpoint written before selection existed has none."""
        if not state:
            return cls()
        return cls(int(state["step"]), dict(state["valid"]), dict(state["test"]))
