"""A trial's metrics: one JSON object per log step ("learning/", "perf/") and per evaluation ("eval/").

On a local disk the records are appended to WORKDIR/metrics.jsonl. An object store cannot append,
and rewriting one object at every record costs the square of the run's length, so there the
records go into parts, WORKDIR/metrics.parts/FIRSTSTEP-SEQ.jsonl, of at most PART_RECORDS records
each, written when full, PART_SECONDS after their first record, at every checkpoint and at the
end. Records not yet written when a run is killed are past its last checkpoint, so the resumed
run logs them again. Readers take metrics.jsonl, then the parts in name order (`read_lines`).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import jax
from etils import epath

from scaling.services.workdir import is_local, storage_errors, write_atomically

FILE_NAME = "metrics.jsonl"
PARTS_NAME = "metrics.parts"
PART_RECORDS = 200
PART_SECONDS = 60.0


def read_lines(workdir: epath.Path) -> list[str]:
    """Every record line of a trial, in the order written: metrics.jsonl, then the parts."""
    workdir = epath.Path(workdir)
    lines = []
    whole = workdir / FILE_NAME
    if whole.exists():
        lines.extend(whole.read_text().splitlines())
    parts = workdir / PARTS_NAME
    if parts.exists():
        for part in sorted(parts.glob("*.jsonl"), key=lambda p: p.name):
            lines.extend(part.read_text().splitlines())
    return [line for line in lines if line.strip()]


def read_records(workdir: epath.Path) -> list[dict[str, Any]]:
    """The parsed records of read_lines; a damaged line (a killed writer's last) is skipped."""
    records = []
    for line in read_lines(workdir):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _kept(lines: list[str], step: int, evaluation_at_step: bool) -> list[str]:
    """The lines of records at or before `step` (without the evaluation at `step` unless
    evaluation_at_step); damaged lines dropped."""
    return [line for line in lines if (at := _step_of(line)) is not None
            and (at < step or at == step and (evaluation_at_step or '"eval/' not in line))]


class MetricsLog:
    """Writes a trial's records (process 0 only), each also sent to `events` (TensorBoard)."""

    def __init__(self, workdir: epath.Path, events: Any = None, in_parts: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """in_parts: write parts rather than append (default: on object stores)."""
        self.workdir, self.events, self.clock = epath.Path(workdir), events, clock
        self.appendable = is_local(self.workdir) if in_parts is None else not in_parts
        self.path = self.workdir / FILE_NAME
        self.parts = self.workdir / PARTS_NAME
        self.buffer: list[str] = []
        self.buffer_started = 0.0
        self.written_parts = 0

    def keep_until(self, step: int, evaluation_at_step: bool = True) -> list[dict[str, Any]]:
        """Drop the records of steps after `step` (those a killed run logged past its last
        checkpoint, which the resumed run logs again) and any damaged line; also the evaluation
        at `step` when the resumed run makes it again (the final one). Returns the records kept
        (process 0; [] elsewhere)."""
        if jax.process_index() != 0:
            return []
        kept_lines = []
        if self.path.exists():
            kept = _kept(self.path.read_text().splitlines(), step, evaluation_at_step)
            write_atomically(self.path, "".join(line + "\n" for line in kept))
            kept_lines += kept
        if self.parts.exists():
            for part in sorted(self.parts.glob("*.jsonl"), key=lambda p: p.name):
                lines = part.read_text().splitlines()
                kept = _kept(lines, step, evaluation_at_step)
                if not kept:
                    part.unlink()
                elif len(kept) < len(lines):
                    part.write_text("".join(line + "\n" for line in kept))  # one object: replaced whole
                kept_lines += kept
            self.written_parts = len(list(self.parts.glob("*.jsonl")))
        return [json.loads(line) for line in kept_lines]

    def write(self, record: dict) -> None:
        if jax.process_index() != 0:
            return
        if self.events is not None:
            self.events.write(record)
        line = json.dumps(record, sort_keys=True)
        if self.appendable:  # a line cut short by a full disk is dropped by the resumed run's keep_until
            with self.path.open("a") as handle:
                handle.write(line + "\n")
            return
        if not self.buffer:
            self.buffer_started = self.clock()
        self.buffer.append(line)
        if len(self.buffer) >= PART_RECORDS or self.clock() - self.buffer_started >= PART_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as one part (object stores; local files are always written)."""
        if not self.buffer or jax.process_index() != 0:
            return
        first_step = _step_of(self.buffer[0]) or 0
        self.parts.mkdir(parents=True, exist_ok=True)
        part = self.parts / f"{first_step:010d}-{self.written_parts:05d}.jsonl"
        with storage_errors(part):
            part.write_text("".join(line + "\n" for line in self.buffer))
        self.written_parts += 1
        self.buffer = []
