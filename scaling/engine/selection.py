"""The evaluations a trial reports: the one with the best validation HR@10 (how the published
sequential-recommendation numbers are selected) and the plateau of the last ten, kept as training
goes and in each checkpoint, so a resumed run reports as an uninterrupted one does (nothing is
read back from metrics files)."""

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


PLATEAU_EVALS = 10  # the reference's plateau statistic: the mean over its last 10 epochs' evaluations
PLATEAU_METRICS = ("hr@10", "ndcg@10")


@dataclasses.dataclass
class Evaluations:
    """What a result reports of a trial's evaluations: the best by validation HR@10, and the test
    HR@10 and NDCG@10 of the last PLATEAU_EVALS evaluations (periodic and final), steadier than one.
    Both travel in each checkpoint."""

    best: BestEvaluation = dataclasses.field(default_factory=BestEvaluation)
    recent: list[dict] = dataclasses.field(default_factory=list)

    def offer(self, step: int, valid: Mapping[str, float], test: Mapping[str, float]) -> None:
        self.best.offer(step, valid, test)
        if all(key in test for key in PLATEAU_METRICS):
            self.recent = [*self.recent, {key: test[key] for key in PLATEAU_METRICS}][-PLATEAU_EVALS:]

    def plateau(self) -> dict[str, Any]:
        """{plateau_evals, plateau_hr@10, plateau_ndcg@10}; {} before any test HR@10."""
        if not self.recent:
            return {}
        return {"plateau_evals": len(self.recent),
                **{f"plateau_{key}": sum(r[key] for r in self.recent) / len(self.recent) for key in PLATEAU_METRICS}}

    def to_state(self) -> dict[str, Any]:
        """JSON for a checkpoint's data state."""
        return {"best_eval": self.best.to_state(), "recent_tests": self.recent}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], logged: list[Mapping[str, Any]] = ()) -> "Evaluations":
        """From a checkpoint's data state. A checkpoint written before the recent tests were kept
        there takes them from the evaluation records logged up to it (`logged`, metrics.jsonl's)."""
        recent = state.get("recent_tests")
        if recent is None:
            recent = [{key: r[f"eval/test_{key}"] for key in PLATEAU_METRICS}
                      for r in logged if all(f"eval/test_{key}" in r for key in PLATEAU_METRICS)]
        return cls(BestEvaluation.from_state(state.get("best_eval")), [dict(r) for r in recent][-PLATEAU_EVALS:])
