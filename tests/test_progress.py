"""Progress of a trial and of a sweep: plain lines without control characters off a terminal, a
redrawn display on one, progress.json for the driver."""

from __future__ import annotations

import io
import json
import time

from etils import epath

from models.core.config import ModelConfig
from scaling.config import TrialConfig
from scaling.services.progress import TrialProgress, format_seconds, read_progress
from sweeps.monitor import SweepMonitor
from sweeps.spec import Trial


def record(step: int, seconds: float | None = 0.5) -> dict:
    return {"step": step, "learning/loss": 3.25, "perf/step_seconds": seconds,
            "perf/tokens_per_second": 1234.0 if seconds else None, "perf/mfu": 0.0421 if seconds else None}


def test_a_trial_off_a_terminal_prints_plain_lines_and_keeps_progress_json(tmp_path) -> None:
    stream = io.StringIO()
    progress = TrialProgress(epath.Path(tmp_path), total_steps=100, stream=stream)
    progress.train(record(10, None))
    progress.train(record(20))
    progress.phase("eval", "eval step 20: valid hr@10 0.1000")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["step 10/100  loss 3.2500  (compiling)",
                     "step 20/100  loss 3.2500  1234 tok/s  MFU 4.2%  ETA 40s",
                     "eval step 20: valid hr@10 0.1000"]
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    state = read_progress(epath.Path(tmp_path))
    assert (state["step"], state["total_steps"], state["phase"], state["eta_seconds"]) == (20, 100, "eval", 40.0)
    assert [format_seconds(s) for s in (None, 5, 725, 12000)] == ["-", "5s", "12m05s", "3h20m"]


def test_a_trial_on_a_terminal_redraws_a_bar(tmp_path) -> None:
    stream = io.StringIO()
    progress = TrialProgress(epath.Path(tmp_path), total_steps=100, stream=stream, live=True)
    progress.train(record(20))
    progress.close()
    shown = stream.getvalue()
    assert "\x1b[" in shown and "step 20/100" in shown and "ETA 40s" in shown


def test_the_sweep_monitor_prints_each_running_trial_and_the_counts(tmp_path) -> None:
    trials = [Trial(TrialConfig(model=ModelConfig(d_model=d)), {"size": f"d{d}"}) for d in (16, 32, 64)]
    folder = lambda trial: epath.Path(tmp_path) / trial.trial_id
    folder(trials[0]).mkdir()
    (folder(trials[0]) / "progress.json").write_text(json.dumps(
        {"step": 30, "total_steps": 60, "loss": 2.5, "tokens_per_second": 900.0, "mfu": 0.02, "eta_seconds": 75,
         "phase": "train"}))
    stream = io.StringIO()
    with SweepMonitor("demo", total=4, done_before=1, folder_of=folder, stream=stream, interval=0.05) as monitor:
        monitor.started(trials[0])
        monitor.started(trials[1])  # no progress.json yet: not shown
        time.sleep(0.3)
        monitor.finished(trials[1], False, "[1/3] a failed trial")
        monitor.elsewhere(trials[2], "a trial another driver runs")
    text = stream.getvalue()
    assert "sweep demo: done 1/4, running 2, failed 0, pending 1" in text
    assert f"  {trials[0].trial_id} size=d16: step 30/60  loss 2.5000  900 tok/s  MFU 2.0%  ETA 1m15s  [train]" in text
    assert text.count(f"{trials[0].trial_id} size=d16: step 30/60") == 1  # repeated only when the step moves
    assert trials[1].trial_id not in text
    assert text.splitlines()[-2:] == ["a trial another driver runs",
                                      "sweep demo: done 1/4, running 1, failed 1, pending 0, another driver's 1"]
    assert "\x1b" not in text
