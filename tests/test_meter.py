"""Step accounting: untimed compile step, loss windows, cumulative totals, excluded eval time."""

from __future__ import annotations

import time

import pytest
from etils import epath

from scaling.engine.meter import StepMeter
from scaling.services.progress import TrialProgress, format_line


def metrics(loss_sum: float, positions: float) -> dict:
    return {"loss_sum": loss_sum, "positions": positions, "grad_norm": 1.0}


def test_windows_totals_and_timing() -> None:
    meter = StepMeter(first_timed_step=2, log_every=2, total_steps=5, peak_flops=1e6, tokens=100.0, flops=1e3)
    assert meter.record(1, metrics(10.0, 5.0), tokens=10, flops=1e5) is None  # compile step: not timed
    time.sleep(0.02)
    record = meter.record(2, metrics(2.0, 5.0), tokens=20, flops=2e5)
    assert record["learning/loss"] == pytest.approx(12.0 / 10.0)  # sums over the window, then divides
    assert record["progress/tokens"] == 130 and record["progress/train_flops"] == pytest.approx(1e3 + 3e5)
    assert record["perf/tokens_per_second"] == pytest.approx(20 / meter.step_times[0])
    assert len(meter.step_times) == 1 and meter.step_times[0] >= 0.02
    eval_started = time.perf_counter()
    time.sleep(0.2)  # an eval between steps must not count as step time
    meter.exclude(time.perf_counter() - eval_started)
    assert meter.record(3, metrics(1.0, 1.0), tokens=5, flops=1e5) is None
    assert 0 <= meter.step_times[-1] < 0.1
    last = meter.record(5, metrics(3.0, 1.0), tokens=5, flops=1e5)  # the final step always logs
    assert last["learning/loss"] == pytest.approx(4.0 / 2.0) and meter.final_loss == last["learning/loss"]
    summary = meter.summary()
    assert summary["mfu"] == pytest.approx(4e5 / sum(meter.step_times) / 1e6)
    shown = TrialProgress(epath.Path("/nonexistent"), 5, enabled=False)
    shown.train(last)
    assert "MFU" in format_line(shown.state) and shown.state["eta_seconds"] == 0.0
    first = StepMeter(2, 1, 3, 1e6)
    shown.train(first.record(1, metrics(1.0, 1.0), 1, 1))
    assert format_line(shown.state).endswith("(compiling)") and shown.state["eta_seconds"] is None
