"""Running a sweep's trials: locally (one subprocess per trial) or through a TPU launcher."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from etils import epath

from data.sources import cache_dir
from scaling.services.lease import WorkdirBusy, workdir_lock
from scaling.services.preemption import PARENT_ENV
from scaling.services.progress import format_seconds
from scaling.services.workdir import LOCK_NAME, is_local
from sweeps.monitor import SweepMonitor
from sweeps.results import ResultsStore
from sweeps.spec import Sweep, Trial

REPO_ROOT = epath.Path(__file__).parent.parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def trial_dir(workdir: epath.Path, trial: Trial) -> epath.Path:
    return workdir / "trials" / trial.trial_id


def train_args(workdir: epath.Path, trial: Trial) -> list[str]:
    """Arguments of `python -m scaling.train` for one trial."""
    folder = trial_dir(workdir, trial)
    return ["--config", str(folder / "config.json"), "--workdir", str(folder), "--json"]


def prepare_trial(workdir: epath.Path, trial: Trial) -> None:
    folder = trial_dir(workdir, trial)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(trial.config.to_json())
    (folder / "labels.json").write_text(json.dumps(dict(trial.labels), sort_keys=True))


def select(trials: Sequence[Trial], pattern: str | None) -> list[Trial]:
    """Trials whose id or `label=value` text matches the glob pattern (all when None)."""
    if not pattern:
        return list(trials)
    def text(trial: Trial) -> str:
        return trial.trial_id + " " + " ".join(f"{k}={v}" for k, v in trial.labels.items())
    return [t for t in trials if fnmatch.fnmatch(text(t), f"*{pattern}*")]


def make_record(sweep: Sweep, trial: Trial, result: dict[str, Any]) -> dict[str, Any]:
    """result.json's fields, the trial id and status, the trial's axis values (and, in "labels",
    their names)."""
    record = {**result, "trial_id": trial.trial_id, "sweep": sweep.name, "labels": ",".join(trial.labels)}
    record.setdefault("status", "failed: no result")
    for key, value in trial.labels.items():
        record[key] = value
    if trial.tuning:  # tuned(): which labels tune, and whether this is the point's untuned run
        record.update(tuned=",".join(trial.tuning), tuning_default=trial.tuning_default)
    return record


DRIVER_LOCK = ".driver.lock"  # in a trial's folder, held by the driver running it
STATES = ("done", "running", "failed", "preempted", "pending")


def status_of(workdir: epath.Path, trials: Sequence[Trial]) -> dict[str, str]:
    """trial_id -> done | running | failed | preempted (stopped by SIGTERM, resumes when run) | pending."""
    records = ResultsStore(workdir).load()
    states = {}
    for trial in trials:
        record = records.get(trial.trial_id)
        if record and record["status"] == "ok":
            states[trial.trial_id] = "done"
        elif _running(trial_dir(workdir, trial)):
            states[trial.trial_id] = "running"
        elif record and record["status"] == "preempted":
            states[trial.trial_id] = "preempted"
        elif record:
            states[trial.trial_id] = "failed"
        else:
            states[trial.trial_id] = "pending"
    return states


def _running(folder: epath.Path) -> bool:
    """A trial runs while its driver or its training process holds its lock (local: released when
    they end, however they end) or an unexpired lease (object stores)."""
    return any(workdir_lock(folder, name).held_elsewhere() for name in (DRIVER_LOCK, LOCK_NAME))


def compilation_cache_env(env: dict[str, str]) -> dict[str, str]:
    """env with JAX's persistent compilation cache on, unless env sets it already: trials of one
    shape (a size trained for several step counts, a constant learning rate) compile once per
    machine. Every compilation is kept, the ~1 s ones of small models included. In the lab's cache
    folder, on local disk (a multi-process CPU trial turns it off, scaling/services/distributed.py)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir() / "xla"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **env}


@contextlib.contextmanager
def trial_log(folder: epath.Path) -> Iterator[BinaryIO]:
    """FOLDER/train.log opened for appending. An object store cannot append, and a process's
    stderr needs a file: there the log is written locally and added to the stored one after."""
    if is_local(folder):
        with (folder / "train.log").open("ab") as handle:
            yield handle
        return
    with tempfile.TemporaryFile() as handle:
        try:
            yield handle
        finally:
            handle.seek(0)
            stored = folder / "train.log"
            earlier = stored.read_bytes() if stored.exists() else b""
            stored.write_bytes(earlier + handle.read())


def run_local_trial(workdir: epath.Path, trial: Trial, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One trial in its own process (crash isolation); resumes from its checkpoints if any. The
    process gets SIGTERM if this driver dies, so it checkpoints and stops rather than run on
    unrecorded (a rerun of the sweep resumes it)."""
    folder = trial_dir(workdir, trial)
    command = [sys.executable, "-m", "scaling.train", *train_args(workdir, trial)]
    with trial_log(folder) as train_log:
        process = subprocess.Popen(command, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=train_log,
                                   env={**compilation_cache_env(dict(env or os.environ)), PARENT_ENV: str(os.getpid())})
        stdout, _ = process.communicate()
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if process.returncode != 0 and result.get("status", "ok") == "ok":
        tail = (folder / "train.log").read_text().strip().splitlines()[-1:] if (folder / "train.log").exists() else []
        tail = tail or ["no output"]
        result = {"status": f"failed: exit {process.returncode}: {tail[0][:300]}"}
    return result


def run_trials(sweep: Sweep, workdir: epath.Path, trials: Sequence[Trial], parallel: int,
               run_one: Callable[[Trial], dict[str, Any]], progress_every: float = 30.0) -> list[dict[str, Any]]:
    """Run the trials that have no ok record yet, `parallel` at a time, recording each as it ends;
    their progress is shown as they run (sweeps/monitor.py; plain lines every progress_every
    seconds when not on a terminal)."""
    store = ResultsStore(workdir)
    records = store.sync()  # a driver stopped between a record and results.jsonl left the file behind
    done = {tid for tid, record in records.items() if record["status"] == "ok"}
    todo = [t for t in trials if t.trial_id not in done]
    log(f"sweep {sweep.name}: {len(trials)} trials, {len(trials) - len(todo)} already done, {len(todo)} to run")
    lock = threading.Lock()
    finished: list[dict[str, Any]] = []
    failed_writes: list[OSError] = []  # a results store that cannot be written stops the sweep
    started = time.perf_counter()
    monitor = SweepMonitor(sweep.name, len(trials), len(trials) - len(todo), lambda t: trial_dir(workdir, t),
                           interval=progress_every)

    def one(trial: Trial) -> None:
        if failed_writes:
            return
        claim = workdir_lock(trial_dir(workdir, trial), DRIVER_LOCK)  # two drivers never run one trial
        try:
            trial_dir(workdir, trial).mkdir(parents=True, exist_ok=True)
            claim.acquire()
        except WorkdirBusy as busy:
            monitor.elsewhere(trial, f"{trial.trial_id}: skipped, {busy} (another sweep driver)")
            return
        try:
            if store.load().get(trial.trial_id, {}).get("status") == "ok":
                monitor.elsewhere(trial, f"{trial.trial_id}: finished by another sweep driver")
                return
            prepare_trial(workdir, trial)
            monitor.started(trial)
            run_and_record(trial)
        finally:
            claim.release()

    def run_and_record(trial: Trial) -> None:
        trial_started = time.perf_counter()
        result = finished_result(trial_dir(workdir, trial), trial)
        if result is not None:
            log(f"{trial.trial_id}: finished earlier (its result.json), recorded without rerunning")
        else:
            try:
                result = run_one(trial)
            except Exception as error:  # a launcher bug must not stop the sweep
                result = {"status": f"failed: {type(error).__name__}: {error}"}
        record = make_record(sweep, trial, result)
        with lock:
            try:
                store.record(record)
            except OSError as error:  # the trial's own result.json stays: a rerun records it
                failed_writes.append(error)
                log(f"{trial.trial_id}: cannot record it: {error.strerror or error}; stopping the sweep")
                return
            finished.append(record)
            elapsed = time.perf_counter() - started
            remaining = elapsed / len(finished) * (len(todo) - len(finished))
            labels = " ".join(f"{k}={v}" for k, v in trial.labels.items())
            shown = [f"{key} {record[key]:.4f}" for key in ("eval_loss", "hr@10") if record.get(key) is not None]
            summary = " ".join(shown) if record["status"] == "ok" else \
                " ".join(filter(None, [record["status"], record.get("reason")]))
            monitor.finished(trial, record["status"] == "ok",
                             f"[{len(finished)}/{len(todo)}] {trial.trial_id} {labels}: {summary} "
                             f"({time.perf_counter() - trial_started:.0f}s, ETA {format_seconds(remaining)})")

    with monitor, concurrent.futures.ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
        list(pool.map(one, todo))
    if failed_writes:
        raise failed_writes[0]
    return finished


def finished_result(folder: epath.Path, trial: Trial) -> dict[str, Any] | None:
    """The trial's result.json when it says the trial finished (a driver stopped before recording
    it, or recording failed), else None."""
    path = folder / "result.json"
    try:
        result = json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(result, dict) and result.get("status") == "ok" and result.get("trial_id") == trial.trial_id:
        return result
    return None
