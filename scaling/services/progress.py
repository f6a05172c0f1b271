"""What a running trial shows: on a terminal a redrawn bar (rich), elsewhere (a log file, CI) one
plain line per log step with the same numbers and no control characters; and, for the sweep
driver that watches it, WORKDIR/progress.json (step, total, loss, tokens/s, MFU, ETA, phase),
replaced whole at most every few seconds and at every change of phase.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from etils import epath

from scaling.services.workdir import write_atomically

PROGRESS_FILE = "progress.json"
FILE_INTERVAL_SECONDS = 5.0


def format_seconds(seconds: float | None) -> str:
    """ETA text: 45s, 12m05s, 3h20m; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_line(state: dict[str, Any]) -> str:
    """One plain progress line: step, loss, tokens/s, MFU, ETA."""
    line = f"step {state['step']}/{state['total_steps']}  loss {state['loss']:.4f}"
    if state.get("tokens_per_second") is None:
        return line + "  (compiling)"
    return (line + f"  {state['tokens_per_second']:.0f} tok/s  MFU {state['mfu']:.1%}"
            f"  ETA {format_seconds(state['eta_seconds'])}")


def is_terminal(stream: TextIO) -> bool:
    import os

    return stream.isatty() and os.environ.get("TERM", "") not in ("", "dumb")


class TrialProgress:
    """Progress of one training run (process 0 writes; others are silent)."""

    def __init__(self, workdir: epath.Path, total_steps: int, enabled: bool = True, stream: TextIO = sys.stderr,
                 live: bool | None = None):
        self.path = workdir / PROGRESS_FILE
        self.total_steps, self.enabled, self.stream = total_steps, enabled, stream
        self.state: dict[str, Any] = {"step": 0, "total_steps": total_steps, "loss": None, "tokens_per_second": None,
                                      "mfu": None, "eta_seconds": None, "phase": "starting"}
        self._written = 0.0
        self._bar = None
        if enabled and (is_terminal(stream) if live is None else live):
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                 TextColumn("{task.fields[text]}"), console=Console(file=stream, force_terminal=True),
                                 transient=False)
            self._task = self._bar.add_task("train", total=total_steps, text="compiling")
            self._bar.start()

    def train(self, record: dict[str, Any]) -> None:
        """A logged training record (scaling.engine.meter): the display and the file follow it."""
        step = record["step"]
        seconds = record.get("perf/step_seconds")
        self.state.update(step=step, loss=record["learning/loss"], tokens_per_second=record.get("perf/tokens_per_second"),
                          mfu=record.get("perf/mfu"), phase="train",
                          eta_seconds=seconds * (self.total_steps - step) if seconds else None)
        if not self.enabled:
            return
        if self._bar is not None:
            text = format_line(self.state).split("  ", 1)[1]
            self._bar.update(self._task, completed=step, text=text)
        else:
            print(format_line(self.state), file=self.stream, flush=True)
        self._write(force=step == self.total_steps)

    def phase(self, name: str, message: str | None = None) -> None:
        """A change of phase (eval, checkpoint, done, ...), with a line to show."""
        self.state["phase"] = name
        if not self.enabled:
            return
        if message:
            (self._bar.console.print if self._bar is not None else lambda m: print(m, file=self.stream, flush=True))(message)
        self._write(force=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _write(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._written >= FILE_INTERVAL_SECONDS:
            self._written = now
            write_atomically(self.path, json.dumps({**self.state, "time": time.time()}, sort_keys=True))


def read_progress(workdir: epath.Path) -> dict[str, Any] | None:
    """A trial's last progress.json, or None when it has none (yet) or it cannot be read."""
    path = workdir / PROGRESS_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except Exception:  # a half-visible object-store file, a missing filesystem backend: shown as unknown
        return None
