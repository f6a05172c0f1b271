"""`--profile START:STOP`: a jax.profiler trace of training steps START..STOP (1-based, inclusive)
in WORKDIR/profile/, viewable with TensorBoard's profile plugin or Perfetto; and reading a trace
back as device seconds per HLO op (op_times), each op named by what it computes (hlo_op_names)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
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


# ---- reading a trace back: device time per HLO op -------------------------------------------------

class TraceError(Exception):
    """A trace that holds no op timings to read (no profiler plugin for the device, no xplane file)."""


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_CALLED = re.compile(r"\b(?:calls|to_apply)=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MATMUL = re.compile(r"\b(?:dot_general|conv_general_dilated)$")
_FUSING_OPCODES = ("fusion", "call", "custom-call", "async-start")  # ops whose called code runs inside their event


def hlo_module_name(hlo_text: str) -> str:
    """The module name of an HLO text ("HloModule jit_train_step, ...")."""
    match = re.match(r"\s*HloModule\s+([\w.\-]+)", hlo_text)
    if not match:
        raise TraceError("not an HLO module text")
    return match.group(1)


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """{instruction name: the JAX name stack (op_name metadata) of what it computes} of an
    optimised HLO text. A fusion (or call) stands for its matmul when it has one (the name stack
    of that dot), else for its own metadata, else for the first name stack inside it."""
    instructions: dict[str, tuple[str, list[str], str]] = {}  # name -> (opcode, called computations, op_name)
    computations: dict[str, list[str]] = {}
    current: list[str] = []
    for line in hlo_text.splitlines():
        instruction = _INSTRUCTION.match(line)
        if instruction and not line.rstrip().endswith("{"):
            name, rest = instruction.groups()
            opcode = _OPCODE.search(" " + rest)
            op_name = _OP_NAME.search(rest)
            instructions[name] = (opcode.group(1) if opcode else "", _CALLED.findall(rest),
                                  op_name.group(1).split(";")[0] if op_name else "")
            current.append(name)
        elif (computation := _COMPUTATION.match(line)) is not None:
            current = computations.setdefault(computation.group(1), [])

    def inside(name: str, depth: int = 0) -> list[str]:
        opcode, called, _ = instructions[name]
        names = [name]
        if opcode in _FUSING_OPCODES and depth < 8:
            for computation in called:
                for member in computations.get(computation, []):
                    names += inside(member, depth + 1)
        return names

    def stands_for(name: str) -> str:
        members = [instructions[m][2] for m in inside(name) if instructions[m][2]]
        matmul = next((op for op in members if _MATMUL.search(op)), None)
        return matmul or instructions[name][2] or (members[0] if members else "")

    return {name: stands_for(name) for name in instructions}


def _op_events(profile: Any) -> list[tuple[str, Any, dict[str, Any]]]:
    """(line key, event, stats) of every event that times one XLA op: on accelerators the device
    planes' "XLA Ops" lines (else their events that name an hlo_op), on a CPU the host's."""
    device_planes = [p for p in profile.planes if p.name.startswith("/device:")]
    found = []
    with warnings.catch_warnings():  # jaxlib's event stats type lacks __module__ (a DeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for plane in device_planes or profile.planes:
            lines = list(plane.lines)
            op_lines = [line for line in lines if line.name == "XLA Ops"] or lines
            for line in op_lines:
                for event in line.events:
                    stats = dict(event.stats)
                    if line.name == "XLA Ops" or "hlo_op" in stats:
                        found.append((f"{plane.name}/{line.name}", event, stats))
    return found


def _exclusive(spans: list[tuple[float, float, str]]) -> list[tuple[str, float]]:
    """(op, seconds) of one timeline's (start ns, end ns, op) events, each less the events nested in it."""
    result: list[tuple[str, float]] = []
    open_spans: list[list] = []  # [end, op, its own nanoseconds]
    for start, end, op in sorted(spans, key=lambda span: (span[0], -span[1])):
        while open_spans and open_spans[-1][0] <= start:
            closed = open_spans.pop()
            result.append((closed[1], closed[2]))
        if open_spans:
            open_spans[-1][2] -= min(end, open_spans[-1][0]) - start
        open_spans.append([end, op, end - start])
    result += [(span[1], span[2]) for span in open_spans]
    return [(op, max(seconds, 0.0) * 1e-9) for op, seconds in result]


def op_times(trace_folder: Path, module: str) -> list[tuple[str, float]]:
    """(HLO op name, seconds) of every timed op of HLO module `module` in the newest
    *.xplane.pb under trace_folder, nested ops (a CPU while loop's body) not counted twice."""
    files = sorted(Path(trace_folder).rglob("*.xplane.pb"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise TraceError(f"{trace_folder}: no *.xplane.pb trace file")
    profile = jax.profiler.ProfileData.from_file(str(files[-1]))
    timelines: dict[str, list[tuple[float, float, str]]] = {}
    for key, event, stats in _op_events(profile):
        owner = str(stats.get("hlo_module", module)).split("(")[0]
        if owner == module:
            op = str(stats.get("hlo_op", event.name))
            timelines.setdefault(key, []).append((event.start_ns, event.end_ns, op))
    if not timelines:
        raise TraceError(f"{files[-1]}: no op events of {module} (the profiler saw no device activity)")
    return [timed for spans in timelines.values() for timed in _exclusive(spans)]
