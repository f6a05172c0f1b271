"""A sweep's trials run in the test's own process instead of one subprocess each: no start-up per
trial, and faults a test injects here reach them. Trials of one process see the same devices and
XLA flags as the subprocesses the tests start (conftest.py), so they give the same numbers."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from etils import epath

from scaling import train as train_module
from sweeps import runner


def run_trial(workdir: epath.Path, trial: Any, env: dict | None = None) -> dict:
    """runner.run_local_trial in this process: the result is the last line the trial prints (--json)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = train_module.main(runner.train_args(workdir, trial))
    result = json.loads(printed.getvalue().splitlines()[-1])
    if code != 0 and result.get("status", "ok") == "ok":
        result = {"status": f"failed: exit {code}"}
    return result


def trials_in_process(monkeypatch) -> None:
    """From here on, `python -m sweeps run`'s main() called in this process trains here too."""
    monkeypatch.setattr(runner, "run_local_trial", run_trial)
