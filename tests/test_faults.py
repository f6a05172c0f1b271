"""Faults injected into a real training process: SIGKILL at a random step, SIGTERM (preemption),
a damaged checkpoint, a failed write, a busy workdir. After each, rerunning the same command
gives exactly the result of an uninterrupted run."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from scaling import train as train_module
from scaling.services.metrics_log import MetricsLog
from scaling.services.workdir import WorkdirLock, write_atomically

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY = 12, 3
# the tiny preset with dropout on, so that a resumed run must also redraw the same masks
COMMAND = [sys.executable, "-m", "scaling.train", "--preset", "tiny", "--steps", str(STEPS),
           "--checkpoint-every", str(CHECKPOINT_EVERY), "--set", "train.log_every=1",
           "--set", "model.dropout=0.2", "--set", "model.input_dropout=0.2", "--json"]
COMPARED = ("final_train_loss", "eval_loss", "test_loss", "hr@10", "ndcg@10", "hr@50", "mrr", "tokens",
            "train_flops", "steps", "plateau_hr@10")


def _env(lab_cache: Path) -> dict[str, str]:
    return dict(os.environ, SCALING_LAB_CACHE=str(lab_cache))  # XLA_FLAGS: conftest's 8 devices


def train(workdir: Path, lab_cache: Path) -> subprocess.CompletedProcess:
    """COMMAND run to its end in this process (the same devices and flags as its subprocesses: a
    rerun after a kill is the same command again, without a second start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setenv("SCALING_LAB_CACHE", str(lab_cache))
        code = train_module.main(COMMAND[3:] + ["--workdir", str(workdir)])
    return subprocess.CompletedProcess(COMMAND, code, out.getvalue(), err.getvalue())


def train_until(workdir: Path, lab_cache: Path, step: int, signum: int) -> tuple[int, str]:
    """Start training, send `signum` once step `step` is logged; (exit status, stderr)."""
    process = subprocess.Popen(COMMAND + ["--workdir", str(workdir)], cwd=REPO_ROOT, env=_env(lab_cache),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if line.startswith(f"step {step}/{STEPS} "):
                process.send_signal(signum)
                break
        lines += process.stderr.readlines()
        process.wait(timeout=120)
    finally:
        process.kill()
    return process.returncode, "".join(lines)


def logged(workdir: Path) -> list[tuple]:
    """(step, train loss or None, test HR@10 or None) of every metrics.jsonl line."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("learning/loss"), r.get("eval/test_hr@10")) for r in records]


def assert_same_result(workdir: Path, reference: Path) -> dict:
    result, expected = (json.loads((d / "result.json").read_text()) for d in (workdir, reference))
    assert result["status"] == "ok"
    for key in COMPARED:
        assert result[key] == expected[key], key
    assert logged(workdir) == logged(reference)  # every step's loss, logged once
    return result


@pytest.fixture(scope="module")
def reference(tmp_path_factory, lab_cache, ml100k) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    done = train(workdir, lab_cache)
    assert done.returncode == 0, done.stderr
    return workdir


@pytest.mark.slow(10)
def test_sigkill_at_a_random_step_then_rerun_equals_an_uninterrupted_run(tmp_path, lab_cache, reference) -> None:
    kill_at = random.Random().randint(CHECKPOINT_EVERY + 1, STEPS - 1)  # after the first checkpoint
    status, stderr = train_until(tmp_path, lab_cache, kill_at, signal.SIGKILL)
    assert status == -signal.SIGKILL, stderr
    assert not (tmp_path / "result.json").exists()
    # the save of a step is asynchronous: on a slow machine the kill may come before any commit
    committed = [int(p.parent.name) for p in (tmp_path / "checkpoints").glob("*/commit_success.txt")]
    done = train(tmp_path, lab_cache)
    assert done.returncode == 0, done.stderr
    result = assert_same_result(tmp_path, reference)
    resumed = result["resumed_from_step"]
    assert resumed == max(committed, default=None), (kill_at, committed, resumed)
    if resumed is not None:
        assert resumed % CHECKPOINT_EVERY == 0 and CHECKPOINT_EVERY <= resumed <= kill_at + 1, (kill_at, resumed)
        assert f"resumed from step {resumed}" in done.stderr


@pytest.mark.slow(8)
def test_sigterm_saves_the_current_step_exits_143_and_the_rerun_resumes_there(tmp_path, lab_cache, reference) -> None:
    status, stderr = train_until(tmp_path, lab_cache, 4, signal.SIGTERM)  # handled at step 5 or a little later
    assert status == 143, stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "preempted"
    step = result["preempted_at_step"]
    assert 4 < step < STEPS and (tmp_path / "checkpoints" / str(step) / "commit_success.txt").exists()
    assert not list((tmp_path / "checkpoints").glob("*tmp*"))  # committed, not in flight
    done = train(tmp_path, lab_cache)
    assert done.returncode == 0, done.stderr
    assert assert_same_result(tmp_path, reference)["resumed_from_step"] == step


@pytest.mark.slow
def test_a_damaged_checkpoint_is_set_aside_and_the_one_before_is_used(tmp_path, lab_cache, reference) -> None:
    workdir = tmp_path / "trial"
    shutil.copytree(reference, workdir)
    (workdir / "result.json").unlink()
    for path in (workdir / "checkpoints" / str(STEPS) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a half-written copy
    previous = STEPS - CHECKPOINT_EVERY
    done = train(workdir, lab_cache)
    assert done.returncode == 0, done.stderr
    assert f"warning: checkpoint of step {STEPS} cannot be restored" in done.stderr
    assert f"resumed from step {previous}" in done.stderr
    assert [p.name.split("-")[0] for p in (workdir / "corrupt_checkpoints").iterdir()] == [str(STEPS)]
    assert assert_same_result(workdir, reference)["resumed_from_step"] == previous


@pytest.mark.slow
def test_a_busy_workdir_is_refused_without_touching_it(tmp_path, capsys) -> None:
    lock = WorkdirLock(tmp_path)
    lock.acquire()  # as another training process would hold it
    try:
        assert train_module.main(["--preset", "tiny", "--workdir", str(tmp_path)]) == 2
    finally:
        lock.release()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: --workdir {tmp_path} is in use by pid {os.getpid()}")
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_a_full_disk_mid_run_is_one_line_and_status_2(tmp_path, lab_cache, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(lab_cache))

    def disk_full(self, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(MetricsLog, "write", disk_full)
    assert train_module.main(["--preset", "tiny", "--steps", "2", "--workdir", str(tmp_path)]) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert error == [f"error: cannot write {tmp_path / 'metrics.jsonl'}: No space left on device"]
    assert json.loads((tmp_path / "result.json").read_text())["status"].startswith("failed: cannot write")


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch) -> None:
    from etils import epath

    from sweeps.results import ResultsStore

    target = epath.Path(tmp_path / "result.json")
    write_atomically(target, '{"status": "ok"}')
    store = ResultsStore(epath.Path(tmp_path))
    store.record({"trial_id": "a", "status": "ok"})

    def cut(self, other):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(type(target), "replace", cut)
    with pytest.raises(OSError):
        write_atomically(target, '{"status": "preempted"}')
    with pytest.raises(OSError):
        store.record({"trial_id": "b", "status": "ok"})
    assert json.loads(target.read_text()) == {"status": "ok"}
    assert [json.loads(line)["trial_id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()] == ["a"]
    assert not list(tmp_path.rglob("*.partial"))


SWEEP_SPEC = """
import dataclasses
from scaling.presets import preset
from sweeps.spec import Sweep, axis
BASE = preset("tiny")
BASE = dataclasses.replace(BASE, train=dataclasses.replace(BASE.train, steps={steps}, checkpoint_every=3, log_every=1))
SWEEP = Sweep("faults", BASE, axis("lr", "train.learning_rate", {rates}))
"""


def _sweep(tmp_path: Path, steps: int, rates: list[float]):
    from sweeps.spec import load_spec

    spec = tmp_path / "faults.py"
    spec.write_text(SWEEP_SPEC.format(steps=steps, rates=rates))
    return spec, load_spec(spec).trials()


def _driver(spec: Path, workdir: Path, lab_cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeps", *extra, str(spec), "--workdir", str(workdir), "--json"]
                            + (["--no-report"] if extra[0] == "run" else []),
                            cwd=REPO_ROOT, env=_env(lab_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]


def _wait_for(condition, seconds: float, what: str) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow(45)
def test_a_killed_sweep_driver_records_each_trial_once_and_its_rerun_resumes(tmp_path, lab_cache, ml100k,
                                                                              capsys) -> None:
    """lr 1e38 fails (non-finite loss) and the sweep goes on; the driver is SIGKILLed during the
    third trial, which then checkpoints and stops (SIGTERM from its dying parent)."""
    from scaling.services.workdir import WorkdirBusy

    spec, trials = _sweep(tmp_path, 12, [1e38, 1e-3, 2e-3])
    bad, good, killed = (t.trial_id for t in trials)
    workdir = tmp_path / "sweep"
    driver = _driver(spec, workdir, lab_cache, "run")
    train_log = workdir / "trials" / killed / "train.log"
    _wait_for(lambda: train_log.exists() and "step 5/12" in train_log.read_text(), 240, "the third trial's step 5")
    driver.kill()
    driver.wait(timeout=30)

    def trial_stopped() -> bool:
        try:
            lock = WorkdirLock(workdir / "trials" / killed)
            lock.acquire()
            lock.release()
            return True
        except WorkdirBusy:
            return False

    _wait_for(trial_stopped, 60, "the orphaned trial to stop")
    assert json.loads((workdir / "trials" / killed / "result.json").read_text())["status"] == "preempted"
    assert {r["trial_id"]: r["status"] for r in _records(workdir)} == {bad: "failed", good: "ok"}
    from sweeps import __main__ as sweeps_main

    capsys.readouterr()
    sweeps_main.main(["status", str(spec), "--workdir", str(workdir), "--json"])  # in this process: a quick command
    states = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert states["trials"] == {bad: "failed", good: "done", killed: "pending"}

    rerun = _driver(spec, workdir, lab_cache, "run")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 1, err  # one trial failed
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (2, 1)
    records = {r["trial_id"]: r for r in _records(workdir)}
    assert len(_records(workdir)) == 3 and set(records) == {bad, good, killed}
    assert records[bad]["reason"] == "non-finite loss at step 2"
    assert records[killed]["status"] == "ok" and records[killed]["resumed_from_step"] >= 3
    assert "non-finite loss at step 2" in err  # the sweep log names the reason


@pytest.mark.slow(15)
def test_two_drivers_on_one_workdir_run_each_trial_once(tmp_path, lab_cache, ml100k) -> None:
    spec, trials = _sweep(tmp_path, 4, [1e-3, 2e-3])
    workdir = tmp_path / "sweep"
    drivers = [_driver(spec, workdir, lab_cache, "run") for _ in range(2)]
    outputs = [driver.communicate(timeout=300) for driver in drivers]
    assert all(driver.returncode == 0 for driver in drivers), outputs
    records = _records(workdir)
    assert sorted(r["trial_id"] for r in records) == sorted(t.trial_id for t in trials)
    assert all(r["status"] == "ok" and r["resumed_from_step"] is None for r in records)
    for trial in trials:  # one training process per trial, started once
        assert (workdir / "trials" / trial.trial_id / "train.log").read_text().count("data ml-100k:") == 1
