"""`--profile START:STOP`: a jax.profiler trace of training steps START..STOP (1-based, inclusive)
in WORKDIR/profile/, viewable with TensorBoard's profile plugin or Perfetto."""

from __future__ import annotations

from typing import Any

import jax
from etils import epath

from scaling.config import ConfigError


def parse_range(text: str | None) -> tuple[int, int] | None:
    """(START, STOP) from "START:STOP"; ConfigError naming --profile when malformed."""
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    if not sep or not start.isdigit() or not stop.isdigit() or not 1 <= int(start) <= int(stop):
        raise ConfigError(f"--profile {text!r}: expected START:STOP with 1 <= START <= STOP (training steps)")
    return int(start), int(stop)


class StepProfiler:
    """Starts the trace before step START is dispatched, stops it once step STOP has run."""

    def __init__(self, steps: tuple[int, int] | None, folder: epath.Path, enabled: bool = True):
        self.steps, self.folder, self.enabled = steps, folder, enabled and steps is not None
        self.tracing = False

    def before(self, step: int) -> None:
        if self.enabled and not self.tracing and self.steps[0] <= step <= self.steps[1]:
            self.folder.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.folder))
            self.tracing = True

    def after(self, step: int, outputs: Any) -> None:
        if self.tracing and step >= self.steps[1]:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.tracing = False

    def close(self) -> None:
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False
