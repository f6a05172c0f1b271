"""The training loop: take one step after another and, after each, run the hooks due at it (the
shape of big_vision's and levanter's loops). What a trial does besides stepping, evaluating,
checkpointing, logging, profiling, stopping on a preemption notice, is a hook of scaling/engine/trial.py."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Hook:
    """`run(step)` after every `every`-th step (0: never by count) and after the steps in `at`."""

    name: str
    run: Callable[[int], None]
    every: int = 1
    at: frozenset[int] = frozenset()

    def due(self, step: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step in self.at


def run_steps(step: int, total_steps: int, take_step: Callable[[int], None], hooks: Sequence[Hook],
              before: Sequence[Callable[[int], None]] = ()) -> int:
    """Take steps step + 1 .. total_steps: `before` each (with the step about to be taken), then
    `take_step`, then the hooks due, in order. Returns the last step taken."""
    while step < total_steps:
        for call in before:
            call(step + 1)
        take_step(step + 1)
        step += 1
        for hook in hooks:
            if hook.due(step):
                hook.run(step)
    return step
