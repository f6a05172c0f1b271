"""A sweep's progress while it runs, read from each running trial's progress.json.

On a terminal: a table redrawn twice a second (rich) of the running trials (step / total, loss,
tokens/s, MFU, ETA) under the sweep's done / running / failed / pending counts, with each
finished trial's line printed above it. Elsewhere (a log file, CI): the same numbers as plain
lines, one per running trial every `interval` seconds when its step moved, no control characters.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, TextIO

from etils import epath

from scaling.services.progress import format_line, format_seconds, is_terminal, read_progress
from sweeps.spec import Trial


def _labels(trial: Trial) -> str:
    return " ".join(f"{k}={v}" for k, v in trial.labels.items())


class SweepMonitor:
    """started(trial) / finished(ok, line) from the driver's threads; use as a context manager."""

    def __init__(self, name: str, total: int, done_before: int, folder_of: Callable[[Trial], epath.Path],
                 stream: TextIO = sys.stderr, live: bool | None = None, interval: float = 30.0):
        self.name, self.total, self.folder_of, self.stream, self.interval = name, total, folder_of, stream, interval
        self.counts = {"done": done_before, "failed": 0, "elsewhere": 0}
        self.running: dict[str, Trial] = {}
        self.shown_steps: dict[str, int] = {}
        self.live = is_terminal(stream) if live is None else live
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._display: Any = None

    # ---- the driver's side ---------------------------------------------------------------
    def started(self, trial: Trial) -> None:
        with self._lock:
            self.running[trial.trial_id] = trial

    def finished(self, trial: Trial, ok: bool, line: str) -> None:
        with self._lock:
            self.running.pop(trial.trial_id, None)
            self.counts["done" if ok else "failed"] += 1
        self.log(line)

    def elsewhere(self, trial: Trial, line: str) -> None:
        """A trial another driver runs or has finished: no longer pending here."""
        with self._lock:
            self.running.pop(trial.trial_id, None)
            self.counts["elsewhere"] += 1
        self.log(line)

    def log(self, message: str) -> None:
        if self._display is not None:
            self._display.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def summary(self) -> str:
        with self._lock:
            running = len(self.running)
            pending = self.total - sum(self.counts.values()) - running
            elsewhere = f", another driver's {self.counts['elsewhere']}" if self.counts["elsewhere"] else ""
            return (f"sweep {self.name}: done {self.counts['done']}/{self.total}, running {running}, "
                    f"failed {self.counts['failed']}, pending {pending}{elsewhere}")

    # ---- display -------------------------------------------------------------------------
    def __enter__(self) -> "SweepMonitor":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._display = Live(console=Console(file=self.stream, force_terminal=True), refresh_per_second=2,
                                 get_renderable=self._table,
                                 transient=True)
            self._display.start()
        else:
            self._thread = threading.Thread(target=self._plain_lines, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._display is not None:
            self._display.stop()
            self._display = None
        self.log(self.summary())

    def _progress(self) -> list[tuple[Trial, dict | None]]:
        with self._lock:
            trials = list(self.running.values())
        return [(trial, read_progress(self.folder_of(trial))) for trial in trials]

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=self.summary(), title_justify="left", expand=False)
        for column in ("trial", "labels", "step", "loss", "tok/s", "MFU", "ETA", "phase"):
            table.add_column(column, justify="left" if column in ("trial", "labels", "phase") else "right")
        for trial, state in self._progress():
            if state is None:
                table.add_row(trial.trial_id, _labels(trial), "-", "-", "-", "-", "-", "starting")
                continue
            number = lambda key, spec: "-" if state.get(key) is None else format(state[key], spec)
            table.add_row(trial.trial_id, _labels(trial), f"{state['step']}/{state['total_steps']}",
                          number("loss", ".4f"), number("tokens_per_second", ".0f"), number("mfu", ".1%"),
                          format_seconds(state.get("eta_seconds")), state.get("phase", "-"))
        return table

    def _plain_lines(self) -> None:
        while not self._stop.wait(self.interval):
            lines = []
            for trial, state in self._progress():
                if state is None or state.get("loss") is None or self.shown_steps.get(trial.trial_id) == state["step"]:
                    continue
                self.shown_steps[trial.trial_id] = state["step"]
                lines.append(f"  {trial.trial_id} {_labels(trial)}: {format_line(state)}  [{state.get('phase', '-')}]")
            if lines:
                self.log("\n".join([self.summary(), *lines]))
