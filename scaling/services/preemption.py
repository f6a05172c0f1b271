"""SIGTERM as a request to stop at the next step boundary with a checkpoint.

TPU VMs get SIGTERM before maintenance or spot preemption, SLURM sends it before a job's time
limit or a preemption, and Kubernetes before evicting a pod. The handler only sets a flag; the
train loop asks `requested()` after every step, saves the current step, waits until that
checkpoint is committed and exits with EXIT_PREEMPTED. With several processes the flag is
or-ed over all of them (a host gather per step), so every process stops at the same step even
when the signal reaches them at different steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM
PARENT_ENV = "SCALING_LAB_PARENT_PID"  # set by a sweep driver: its trial stops when it dies
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_parent() -> bool:
    """When $SCALING_LAB_PARENT_PID names this process's parent, ask Linux to send SIGTERM here
    when that parent dies (a killed sweep driver): the trial then checkpoints and exits instead
    of running on unrecorded. False where it cannot be arranged."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError, ValueError):
        return False
    if os.getppid() != int(parent):  # the parent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
    return True


class Preempted(Exception):
    """Raised by the train loop once the checkpoint of `step` is started."""

    def __init__(self, step: int):
        super().__init__(f"preempted (SIGTERM) at step {step}")
        self.step = step


class StopRequest:
    """A SIGTERM flag for the duration of a `with` block (the main thread only: Python delivers
    signals there; elsewhere the block installs nothing)."""

    def __init__(self) -> None:
        self.signalled = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def rearm(self) -> None:
        """Take SIGTERM back after something else installed its own handler: joining a
        multi-process job does (jax.distributed's preemption notifier catches SIGTERM itself)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    def requested(self) -> bool:
        """Whether any process of the job has been sent SIGTERM."""
        if jax.process_count() == 1:
            return self.signalled
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.signalled))))
