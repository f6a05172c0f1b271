"""TensorBoard event files of a trial, beside its metrics.jsonl (tensorboardX: no TensorFlow).

Every record of metrics.jsonl becomes scalars under the same names (learning/loss, perf/mfu,
eval/valid_hr@10, ...) at its step. A trial of a sweep writes into a folder named by its sweep
labels (WORKDIR/size=d64x4,max_len=50/, from the labels.json the driver leaves), so
`tensorboard --logdir SWEEP_WORKDIR` lists each run as trials/ID/size=...,max_len=...; a lone
trial writes into its workdir. A resumed run purges the events a killed run logged past its
checkpoint. Object-store workdirs get the events written locally and copied over at each flush.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Mapping

from etils import epath

from scaling.services.workdir import is_local


def run_folder(workdir: epath.Path) -> epath.Path:
    """Where a trial's events go: a folder named by its sweep labels, or the workdir itself."""
    labels_path = workdir / "labels.json"
    try:
        labels = json.loads(labels_path.read_text()) if labels_path.exists() else {}
    except (OSError, ValueError):
        labels = {}
    if not labels:
        return workdir
    name = ",".join(f"{key}={value}" for key, value in labels.items()).replace("/", "_")
    return workdir / name


class EventLog:
    """Scalars of metrics records as TensorBoard events (on process 0; a no-op elsewhere)."""

    def __init__(self, workdir: epath.Path, resumed_from: int | None, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self.target = run_folder(workdir)
        self.local = Path(str(self.target)) if is_local(self.target) else Path(tempfile.mkdtemp(prefix="events-"))
        self.local.mkdir(parents=True, exist_ok=True)
        # TensorBoard drops the events at and after purge_step that earlier files hold: a run killed
        # after its last checkpoint (or before its first, restarting from nothing) logged steps again
        purge = resumed_from + 1 if resumed_from is not None else 0
        self.writer = SummaryWriter(str(self.local), purge_step=purge, flush_secs=30)

    def write(self, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(record["step"])
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(name, float(value), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self._copy()

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self._copy()
        if not is_local(self.target):
            shutil.rmtree(self.local, ignore_errors=True)
        self.writer = None

    def _copy(self) -> None:
        """An object-store workdir gets the local event files whole (they only grow)."""
        if not is_local(self.target):
            self.target.mkdir(parents=True, exist_ok=True)
            for path in self.local.iterdir():
                (self.target / path.name).write_bytes(path.read_bytes())


def read_scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every scalar in the event files of one folder (a TFRecord file
    of tensorboardX Event protos: length, its CRC, the record, its CRC; the CRCs are not checked)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12: offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
