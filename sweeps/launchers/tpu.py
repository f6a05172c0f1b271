"""Launchers that run one sweep trial on TPU pods: an existing TPU VM, a queued resource, or an
xpk workload on GKE (GPU clusters under SLURM: sweeps/launchers/slurm.py). Each plans its exact
argv lists first (what `--dry-run` prints) and then runs them; whatever it creates is deleted
whatever happens to the trial.

Where each command's form comes from:
- `gcloud compute tpus queued-resources create QR --node-id=.. --accelerator-type=..
  --runtime-version=.. --zone=.. [--spot|--reserved]`: the gcloud reference page
  https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create ;
  `describe ... --format=value(state.state)` and `delete ... --force --quiet`, and the states
  (CREATING, ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, FAILED, DELETING, SUSPENDING,
  SUSPENDED): "Manage queued resources", https://cloud.google.com/tpu/docs/queued-resources, and
  the QueuedResourceState.State enum of the TPU API reference.
- `gcloud compute tpus tpu-vm ssh TPU --worker=all --command=..`: the gcloud reference page
  https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/ssh (`--quiet` is the
  gcloud-wide flag that keeps key generation from prompting). A TPU VM node is PREEMPTED when a
  spot VM is taken back (Node.State of the TPU API).
- `pip install "jax[tpu]==V" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html`:
  JAX's installation guide, Google Cloud TPU section, with V the jax that requirements.txt pins.
  TPU VM images ship Python 3.10 while the pins need >= 3.12, so the workers get a Python 3.12
  venv made by `uv` (installed from PyPI).
- `xpk workload create --cluster --workload --tpu-type --num-slices --docker-image --command`,
  `xpk workload list --wait-for-job-completion=NAME --timeout=0` (exit 0: completed, 124: not
  finished yet, 125: finished unsuccessfully, 1: other), `xpk workload list --filter-by-job`
  (Status "Evicted" means preempted) and `xpk workload delete --workload`: the xpk README /
  docs/usage/workloads.md and docs/usage/docker.md (github.com/AI-Hypercomputer/xpk). Workload
  names are at most 40 characters (xpk's workload_name_type). `--docker-image` skips xpk's default
  layering of the current directory onto python:3.10; the workload clones the code itself.
"""


from __future__ import annotations

import re
import shlex
import time
from typing import Sequence

from sweeps.launchers.base import Launcher, LauncherSettings, last_line, resource_name

LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
CHECKOUT = "lab"  # the worker-side directory of the code
VENV = "$HOME/lab-venv"
QR_WAITING = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING")
QR_PREEMPTED = ("SUSPENDING", "SUSPENDED")
QR_DEAD = ("FAILED", "DELETING", *QR_PREEMPTED)


def worker_install_command(settings: LauncherSettings) -> str:
    """On a TPU VM worker: the code at code_ref, and a Python venv with its requirements and jax[tpu]."""
    uv = "python3 -m uv"
    return " && ".join([
        "python3 -m pip install --quiet --user --upgrade uv",
        f"rm -rf {CHECKOUT} && git clone --quiet {shlex.quote(settings.code_url)} {CHECKOUT}",
        f"git -C {CHECKOUT} checkout --quiet {shlex.quote(settings.code_ref)}",
        f"rm -rf {VENV} && {uv} venv --quiet --python {settings.python_version} {VENV}",
        f"{uv} pip install --quiet --python {VENV}/bin/python -r {CHECKOUT}/requirements.txt "
        f'"jax[tpu]=={settings.jax_version}" -f {LIBTPU_RELEASES}',
    ])


def worker_train_command(train_args: Sequence[str]) -> str:
    return f"cd {CHECKOUT} && {VENV}/bin/python -m scaling.train {shlex.join(train_args)} --distributed"


def container_command(settings: LauncherSettings, train_args: Sequence[str]) -> str:
    """In an xpk container (docker_image has git and a Python of the right version)."""
    return " && ".join([
        f"git clone --quiet {shlex.quote(settings.code_url)} {CHECKOUT}",
        f"cd {CHECKOUT}",
        f"git checkout --quiet {shlex.quote(settings.code_ref)}",
        f'python3 -m pip install --quiet -r requirements.txt "jax[tpu]=={settings.jax_version}" -f {LIBTPU_RELEASES}',
        f"python3 -m scaling.train {shlex.join(train_args)} --distributed",
    ])


class TpuVmLauncher(Launcher):
    """An existing TPU VM (settings.tpu_name): install on every worker, then train on every worker."""

    required = ("tpu_name", "zone", "project", "code_url")

    def _where(self) -> list[str]:
        return [f"--zone={self.settings.zone}", f"--project={self.settings.project}"]

    def _ssh(self, name: str, command: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *self._where(), "--worker=all", "--quiet",
                f"--command={command}"]

    def _node_name(self, trial_id: str) -> str:
        return self.settings.tpu_name

    def _worker_plan(self, name: str, train_args: Sequence[str]) -> list[list[str]]:
        return [self._ssh(name, worker_install_command(self.settings)),
                self._ssh(name, worker_train_command(train_args))]

    def plan(self, trial_id: str, train_args: Sequence[str], workdir: str) -> list[list[str]]:
        return self._worker_plan(self._node_name(trial_id), train_args)

    def _run(self, trial_id: str, train_args: Sequence[str], log: list) -> str:
        return self._install_and_train(self._node_name(trial_id), train_args, log)

    def _install_and_train(self, name: str, train_args: Sequence[str], log: list) -> str:
        install, train = self._worker_plan(name, train_args)
        for attempt in range(1, self.settings.install_attempts + 1):
            code, _, err = self._call(install, log)
            if code == 0:
                break
            if self._preempted(name, log):
                return "preempted"
            if attempt < self.settings.install_attempts:
                self._wait()
        else:
            return f"failed: install exited {code}: {last_line(err)}"
        code, _, err = self._call(train, log)
        if code == 0:
            return "ok"
        return "preempted" if self._preempted(name, log) else f"failed: train exited {code}: {last_line(err)}"

    def _preempted(self, name: str, log: list) -> bool:
        describe = ["gcloud", "compute", "tpus", "tpu-vm", "describe", name, *self._where(), "--format=value(state)"]
        code, out, _ = self._call(describe, log)
        return code == 0 and out.strip().upper() == "PREEMPTED"


class QueuedResourcesLauncher(TpuVmLauncher):
    """A fresh queued resource per trial: create, wait for ACTIVE, install, train, always delete."""

    required = ("accelerator_type", "runtime_version", "zone", "project", "code_url")

    def _node_name(self, trial_id: str) -> str:
        return resource_name(self.settings.sweep_name, trial_id)

    def _create(self, name: str) -> list[str]:
        tier = ["--spot"] if self.settings.spot else ["--reserved"] if self.settings.reserved else []
        return ["gcloud", "compute", "tpus", "queued-resources", "create", name, f"--node-id={name}",
                f"--accelerator-type={self.settings.accelerator_type}",
                f"--runtime-version={self.settings.runtime_version}", *self._where(), *tier]

    def _describe(self, name: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "queued-resources", "describe", name, *self._where(),
                "--format=value(state.state)"]

    def _delete(self, name: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "queued-resources", "delete", name, *self._where(), "--force", "--quiet"]

    def plan(self, trial_id: str, train_args: Sequence[str], workdir: str) -> list[list[str]]:
        name = self._node_name(trial_id)
        return [self._create(name), self._describe(name), *self._worker_plan(name, train_args), self._delete(name)]

    def _run(self, trial_id: str, train_args: Sequence[str], log: list) -> str:
        name = self._node_name(trial_id)
        try:
            code, _, err = self._call(self._create(name), log)
            if code != 0:
                return f"failed: create exited {code}: {last_line(err)}"
            problem = self._wait_active(name, log)
            return f"failed: {problem}" if problem else self._install_and_train(name, train_args, log)
        finally:
            self._delete_or_warn(self._delete(name), log, f"queued resource {name}")

    def _state(self, name: str, log: list) -> tuple[str, str]:
        """(STATE, error text); STATE is UNKNOWN when describe fails."""
        code, out, err = self._call(self._describe(name), log)
        lines = out.strip().splitlines()
        return (lines[-1].strip().upper(), "") if code == 0 and lines else ("UNKNOWN", last_line(err))

    def _wait_active(self, name: str, log: list) -> str | None:
        """None once ACTIVE, else why it never got there."""
        deadline = time.monotonic() + self.settings.timeout_seconds
        state, error = "UNKNOWN", ""
        while time.monotonic() < deadline:
            state, error = self._state(name, log)
            if state == "ACTIVE":
                return None
            if state in QR_DEAD:
                return f"queued resource {state} before the trial started"
            self._wait()
        last = f"last state {state}" + (f": {error}" if error else "")
        return f"not ACTIVE after {self.settings.timeout_seconds:g}s ({last})"

    def _preempted(self, name: str, log: list) -> bool:
        return self._state(name, log)[0] in QR_PREEMPTED


class XpkLauncher(Launcher):
    """One xpk workload per trial on an existing GKE cluster; polled until it ends, then deleted."""

    required = ("cluster", "accelerator_type", "zone", "project", "code_url")

    def _where(self) -> list[str]:
        settings = self.settings
        return [f"--cluster={settings.cluster}", f"--project={settings.project}", f"--zone={settings.zone}"]

    def _create(self, name: str, train_args: Sequence[str]) -> list[str]:
        return ["xpk", "workload", "create", *self._where(), f"--workload={name}",
                f"--tpu-type={self.settings.accelerator_type}", f"--num-slices={self.settings.num_slices}",
                f"--docker-image={self.settings.docker_image}",
                f"--command={container_command(self.settings, train_args)}"]

    def _poll(self, name: str) -> list[str]:
        return ["xpk", "workload", "list", *self._where(), f"--wait-for-job-completion={name}", "--timeout=0"]

    def _list(self, name: str) -> list[str]:
        return ["xpk", "workload", "list", *self._where(), f"--filter-by-job={name}"]

    def _delete(self, name: str) -> list[str]:
        return ["xpk", "workload", "delete", *self._where(), f"--workload={name}"]

    def _workload_name(self, trial_id: str) -> str:
        return resource_name(self.settings.sweep_name, trial_id, max_length=40)

    def plan(self, trial_id: str, train_args: Sequence[str], workdir: str) -> list[list[str]]:
        name = self._workload_name(trial_id)
        return [self._create(name, train_args), self._poll(name), self._delete(name)]

    def _run(self, trial_id: str, train_args: Sequence[str], log: list) -> str:
        name = self._workload_name(trial_id)
        try:
            code, _, err = self._call(self._create(name, train_args), log)
            if code != 0:
                return f"failed: xpk create exited {code}: {last_line(err)}"
            return self._wait_finished(name, log)
        finally:
            self._delete_or_warn(self._delete(name), log, f"xpk workload {name}")

    def _wait_finished(self, name: str, log: list) -> str:
        deadline = time.monotonic() + self.settings.timeout_seconds
        while time.monotonic() < deadline:
            code, out, err = self._call(self._poll(name), log)
            if code == 0:
                return "ok"
            if code == 125:
                return self._why_unsuccessful(name, log)
            if code != 124:
                return f"failed: xpk workload list exited {code}: {last_line(err or out)}"
            self._wait()
        return f"failed: workload not finished after {self.settings.timeout_seconds:g}s"

    def _why_unsuccessful(self, name: str, log: list) -> str:
        _, out, _ = self._call(self._list(name), log)
        row = next((line for line in out.splitlines() if line.split()[:1] == [name]), "")
        if re.search(r"\bEvicted\b|preempt", row, re.IGNORECASE):
            return "preempted"
        # Columns: name, created, priority, VMs needed, running/ran, done, status, message..., time.
        message = " ".join(row.split()[7:-1]) if len(row.split()) > 8 else "no status message"
        return f"failed: workload finished unsuccessfully: {message}"
