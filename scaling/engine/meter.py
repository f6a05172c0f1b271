"""Per-step accounting of a training run: loss windows, cumulative tokens and FLOPs (the
scaling-law x-axes), step times and MFU. Steps are recorded one step late, after the next one
is dispatched, so reading a step's metrics never stalls the device queue."""

from __future__ import annotations

import statistics
import time
from typing import Any, Mapping


class StepMeter:
    """first_timed_step: steps before it (a process's first, which compiles) are not timed.
    tokens / flops: totals carried over from a resumed checkpoint."""

    def __init__(self, first_timed_step: int, log_every: int, total_steps: int, peak_flops: float,
                 tokens: float = 0.0, flops: float = 0.0):
        self.first_timed_step, self.log_every, self.total_steps = first_timed_step, log_every, total_steps
        self.peak_flops = peak_flops
        self.tokens, self.flops = tokens, flops
        self.step_times: list[float] = []
        self.timed_flops = self.timed_tokens = 0.0
        self.final_loss = float("nan")
        self._window = self._empty_window()
        self._last = time.perf_counter()

    @staticmethod
    def _empty_window() -> dict[str, float]:
        return {"loss_sum": 0.0, "positions": 0.0, "tokens": 0.0, "flops": 0.0, "seconds": 0.0}

    def exclude(self, seconds: float) -> None:
        """Leave time spent outside training steps (evaluation) out of the next step's time."""
        self._last += seconds

    def record(self, step: int, metrics: Mapping[str, Any], tokens: float, flops: float) -> dict | None:
        """Account for a finished step (its real tokens and model FLOPs); at log steps return the
        record to log."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        window = self._window
        if step >= self.first_timed_step:
            self.step_times.append(seconds)
            self.timed_flops += flops
            self.timed_tokens += tokens
            window["seconds"] += seconds
            window["flops"] += flops
            window["tokens"] += tokens
        window["loss_sum"] += float(metrics["loss_sum"])
        window["positions"] += float(metrics["positions"])
        self.tokens += tokens
        self.flops += flops
        if step % self.log_every and step != self.total_steps:
            return None
        self.final_loss = window["loss_sum"] / max(window["positions"], 1.0)
        timed = window["seconds"] > 0
        record = {
            "step": step,
            "learning/loss": self.final_loss,
            "learning/grad_norm": float(metrics["grad_norm"]),
            **{f"aux/{name}": float(value) for name, value in metrics.get("aux", {}).items()},
            "perf/step_seconds": statistics.median(self.step_times[-self.log_every:]) if timed else None,
            "perf/tokens_per_second": window["tokens"] / window["seconds"] if timed else None,
            "perf/mfu": window["flops"] / window["seconds"] / self.peak_flops if timed else None,
            "progress/tokens": self.tokens,
            "progress/train_flops": self.flops,
        }
        self._window = self._empty_window()
        return record

    def summary(self) -> dict[str, float | None]:
        """Median step time, and throughput and MFU over every timed step."""
        seconds = sum(self.step_times)
        return {
            "step_seconds": statistics.median(self.step_times) if self.step_times else None,
            "tokens_per_second": self.timed_tokens / seconds if seconds else None,
            "mfu": self.timed_flops / seconds / self.peak_flops if seconds else None,
        }
