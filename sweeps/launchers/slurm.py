"""The SLURM launcher: one batch job per trial on a GPU cluster, multi-node when the spec asks.

Each trial gets WORKDIR/trials/ID/slurm.sbatch (what `--dry-run` prints): `nodes` nodes, one task
per node with `gpus_per_node` GPUs, the environment `setup` lines (run by the batch script on the
first node, outside any container), XLA_FLAGS when `xla_flags` is set, and `srun python -m
scaling.train ... --distributed` (in `container_image` when set, through pyxis's --container-*
options, with the workdir and the code directory mounted and the code directory as working
directory), where `jax.distributed.initialize()`
finds the job's shape in the SLURM environment of each task (JAX's SlurmCluster): SLURM_JOB_ID
(the coordinator port is 61440 + job id mod 4096), SLURM_STEP_NODELIST (its first host is the
coordinator), SLURM_NTASKS (the process count), SLURM_PROCID (this process's index) and
SLURM_LOCALID (its index on the node). The workdir must be on a filesystem every node mounts.

Where the commands and states come from (SLURM's man pages, slurm.schedmd.com): `sbatch
--parsable` prints "JOBID[;CLUSTER]"; `#SBATCH --requeue` lets SLURM requeue a preempted job
(squeue shows REQUEUED / PENDING again, same job id; the launcher keeps following it);
`squeue --me --name=NAME` finds a trial's job an earlier driver left queued or running, so a
rerun follows it instead of submitting a second one; `--signal=TERM@120` sends SIGTERM to the
job's tasks 120 s before the time limit, so the trainer checkpoints and exits 143; `squeue
--noheader --format=%T --jobs=ID` prints the state while SLURM holds the job; `sacct --noheader
--parsable2 --allocations --format=State,ExitCode --jobs=ID` its final state (COMPLETED, FAILED,
CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, OUT_OF_MEMORY) and exit code "code:signal" once it left.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Sequence

from scaling.config import ConfigError
from sweeps.launchers.base import PLACEHOLDER, Launcher, last_line, resource_name

ENDED_PREEMPTED = ("PREEMPTED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "OUT_OF_MEMORY", *ENDED_PREEMPTED)
SACCT_LAG_SECONDS = 300.0  # how long sacct may lag a job that left the queue before the trial fails
EXIT_PREEMPTED = "143"  # scaling.train after SIGTERM: checkpoint committed, resumable
REPO_ROOT = Path(__file__).resolve().parents[2]


def _trial_dir(train_args: Sequence[str]) -> Path:
    return Path(train_args[list(train_args).index("--workdir") + 1])


class SlurmLauncher(Launcher):
    """sbatch a job per trial, follow it with squeue / sacct, scancel it if the driver stops first."""

    required = ("partition",)

    def script(self, trial_id: str, train_args: Sequence[str]) -> str:
        """The batch script of one trial."""
        settings, folder = self.settings, _trial_dir(train_args)
        directives = [f"--job-name={resource_name(settings.sweep_name, trial_id)}", f"--nodes={settings.nodes}",
                      "--ntasks-per-node=1", f"--gpus-per-node={settings.gpus_per_node}",
                      f"--partition={settings.partition}", f"--time={settings.time_limit}",
                      f"--output={folder}/slurm-%j.out", "--requeue", "--signal=TERM@120"]
        if settings.account:
            directives.append(f"--account={settings.account}")
        srun = ["srun", "--kill-on-bad-exit=1"]
        code_dir = settings.code_dir or str(REPO_ROOT)
        if settings.container_image:  # pyxis: the tasks run in the image, with the workdir and the code mounted
            srun += [f"--container-image={settings.container_image}",
                     f"--container-mounts={folder.parent.parent},{code_dir}", f"--container-workdir={code_dir}"]
        lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail"]
        lines += [settings.setup] if settings.setup else []
        if settings.xla_flags:
            lines.append(f"export XLA_FLAGS={shlex.quote(settings.xla_flags)}")
        lines.append(f"cd {shlex.quote(code_dir)}")
        lines.append(f"{shlex.join(srun)} python -m scaling.train {shlex.join(train_args)} --distributed")
        return "\n".join(lines) + "\n"

    def _script_path(self, train_args: Sequence[str]) -> Path:
        return _trial_dir(train_args) / "slurm.sbatch"

    def plan(self, trial_id: str, train_args: Sequence[str], workdir: str) -> list[list[str]]:
        return [["sbatch", "--parsable", str(self._script_path(train_args))],
                ["squeue", "--noheader", "--format=%T", "--jobs=<JOBID>"],
                ["sacct", "--noheader", "--parsable2", "--allocations", "--format=State,ExitCode", "--jobs=<JOBID>"]]

    def dry_run_text(self, trial_id: str, train_args: Sequence[str], workdir: str) -> str:
        return (f"# {self._script_path(train_args)}\n{self.script(trial_id, train_args)}"
                + super().dry_run_text(trial_id, train_args, workdir))

    def check_ready(self, workdir: str) -> None:
        missing = [n for n in self.required if PLACEHOLDER.match(str(getattr(self.settings, n)))]
        if missing:
            raise ConfigError(f"launcher settings not given: {', '.join('--' + n.replace('_', '-') for n in missing)}"
                              " (flags or the spec's launcher block)")
        if "://" in workdir:
            raise ConfigError(f"workdir {workdir}: SLURM nodes need a shared filesystem path, not an object store")
        if self.settings.nodes < 1 or self.settings.gpus_per_node < 0:
            raise ConfigError(f"launcher settings: nodes={self.settings.nodes}, gpus_per_node="
                              f"{self.settings.gpus_per_node}; need nodes >= 1, gpus_per_node >= 0")

    def _run(self, trial_id: str, train_args: Sequence[str], log: list) -> str:
        name = resource_name(self.settings.sweep_name, trial_id)
        code, out, _ = self._call(["squeue", "--noheader", "--format=%i", "--me", f"--name={name}"], log)
        queued = out.split() if code == 0 else []
        if queued:  # a job of this trial from an earlier driver still holds it: follow that one
            job = queued[0]
        else:
            path = self._script_path(train_args)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.script(trial_id, train_args))
            code, out, err = self._call(["sbatch", "--parsable", str(path)], log)
            if code != 0:
                return f"failed: sbatch exited {code}: {last_line(err)}"
            job = out.strip().split(";")[0]
        finished = False
        try:
            status = self._follow(job, log)
            finished = True
            return status
        finally:
            if not finished:  # the driver stops first (timeout, error): the job must not run on unwatched
                self._call(["scancel", job], log)

    def _follow(self, job: str, log: list) -> str:
        """The job's end. No deadline while SLURM holds the job (its time limit ends it); squeue not
        answering for timeout_seconds in a row is an error, and so is sacct having no end of a job
        that left the queue SACCT_LAG_SECONDS ago."""
        silent_since = gone_since = None
        while True:
            code, out, err = self._call(["squeue", "--noheader", "--format=%T", f"--jobs={job}"], log)
            state = out.strip().split()[0].upper() if code == 0 and out.strip() else ""
            if state and state not in ENDED:  # queued, running, or requeued (PENDING again)
                silent_since = gone_since = None
            elif code == 0 or "invalid job id" in (err or "").lower():  # SLURM no longer holds it
                final = self._final(job, log)
                if final is not None:
                    return final
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > SACCT_LAG_SECONDS:
                    return f"failed: job {job} left the queue and sacct has no end of it after {SACCT_LAG_SECONDS:g}s"
            else:  # the controller did not answer (e.g. a socket timeout): ask again
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > self.settings.timeout_seconds:
                    raise TimeoutError(f"job {job}: squeue has not answered for {self.settings.timeout_seconds:g}s: "
                                       f"{last_line(err or out)}")
            self._wait()

    def _final(self, job: str, log: list) -> str | None:
        """The status of a job that left the queue; None while sacct has no ended record of it yet
        (the accounting lags the controller, or the controller did not answer)."""
        code, out, _ = self._call(["sacct", "--noheader", "--parsable2", "--allocations", "--format=State,ExitCode",
                                   f"--jobs={job}"], log)
        rows = [line.split("|") for line in out.strip().splitlines() if "|" in line]
        if code != 0 or not rows:
            return None
        state, exit_code = rows[-1][0].split()[0].upper(), rows[-1][1] if len(rows[-1]) > 1 else ""
        if state not in ENDED:
            return None
        if state == "COMPLETED":
            return "ok"
        if state in ENDED_PREEMPTED or exit_code.split(":")[0] == EXIT_PREEMPTED:
            return "preempted"
        return f"failed: job {job} {state} (exit {exit_code})"
