"""Launchers that run one sweep trial on TPU pods: an existing TPU VM, a queued resource, or an
xpk workload on GKE.

Command forms: `gcloud compute tpus queued-resources create|describe|delete` and
`gcloud compute tpus tpu-vm ssh --worker=all --command` as in the Cloud TPU docs ("Manage queued
resources"; queued-resource states WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, FAILED,
SUSPENDING, SUSPENDED); `xpk workload create|list|delete` as in the xpk README.
Every launcher plans its exact argv lists first (shown by `--dry-run`) and then runs them; a
created resource is deleted whatever happens to the trial.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import time
from typing import Any, Callable, Mapping, Sequence

from scaling.config import ConfigError

Runner = Callable[[Sequence[str]], "tuple[int, str, str]"]
PLACEHOLDER = re.compile(r"^<[A-Z_]+>$")


def subprocess_runner(argv: Sequence[str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    return done.returncode, done.stdout, done.stderr


@dataclasses.dataclass(frozen=True)
class LauncherSettings:
    """Where and how trials run. Unset values stay as <PLACEHOLDERS> so any spec can be dry-run;
    running needs them filled (by flags or the spec's launcher block)."""

    accelerator_type: str = "<ACCELERATOR_TYPE>"
    zone: str = "<ZONE>"
    project: str = "<PROJECT>"
    runtime_version: str = "<RUNTIME_VERSION>"
    tpu_name: str = "<TPU_NAME>"
    cluster: str = "<CLUSTER>"
    num_slices: int = 1
    spot: bool = False
    reserved: bool = False
    code_url: str = "<CODE_URL>"  # a git URL the workers can clone
    code_ref: str = "main"
    jax_version: str = "0.10.2"
    sweep_name: str = "sweep"
    poll_seconds: float = 30.0
    timeout_seconds: float = 6 * 3600.0


def settings_from(flags: Mapping[str, Any], spec_launcher: Mapping[str, Any]) -> LauncherSettings:
    """Flags win over the spec's launcher block, which wins over the placeholders."""
    known = {f.name for f in dataclasses.fields(LauncherSettings)}
    for source, values in (("launcher block", spec_launcher), ("flags", flags)):
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown launcher setting {unknown[0]!r} in the {source}; known: {', '.join(sorted(known))}")
    merged = {**spec_launcher, **{k: v for k, v in flags.items() if v is not None}}
    return LauncherSettings(**merged)


def resource_name(sweep_name: str, trial_id: str) -> str:
    """A valid GCP resource name: lowercase letters, digits and dashes, a letter first, <= 63 chars."""
    stem = re.sub(r"[^a-z0-9-]+", "-", sweep_name.lower()).strip("-") or "sweep"
    if not stem[0].isalpha():
        stem = "s-" + stem
    return f"{stem[: 62 - len(trial_id)].rstrip('-')}-{trial_id.lower()}"


@dataclasses.dataclass(frozen=True)
class LaunchOutcome:
    status: str  # "ok", "failed: reason" or "preempted"
    commands_run: list
    seconds: float


def _setup_command(settings: LauncherSettings) -> str:
    """Fetch the code and install it with JAX for TPUs on one worker."""
    return (f"set -e; rm -rf lab && git clone --quiet {shlex.quote(settings.code_url)} lab && cd lab && "
            f"git checkout --quiet {shlex.quote(settings.code_ref)} && python3 -m pip install --quiet -r requirements.txt "
            f"'jax[tpu]=={settings.jax_version}' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html")


def _train_command(train_args: Sequence[str], in_checkout: bool = False) -> str:
    """The trial on one worker; from the home directory unless already inside the checkout."""
    run = f"python3 -m scaling.train {shlex.join(train_args)} --distributed"
    return run if in_checkout else f"cd lab && {run}"


class _Launcher:
    def __init__(self, settings: LauncherSettings, runner: Runner = subprocess_runner):
        self.settings, self.runner = settings, runner

    def _where(self) -> list[str]:
        return [f"--zone={self.settings.zone}", f"--project={self.settings.project}"]

    def _check_filled(self, names: Sequence[str]) -> None:
        missing = [n for n in names if PLACEHOLDER.match(str(getattr(self.settings, n)))]
        if missing:
            flags = ", ".join("--" + n.replace("_", "-") for n in missing)
            raise ConfigError(f"launcher settings not given: {flags} (flags or the spec's launcher block)")

    def _call(self, argv: list[str], log: list) -> tuple[int, str, str]:
        log.append(argv)
        return self.runner(argv)


class TpuVmLauncher(_Launcher):
    """An existing TPU VM (settings.tpu_name): install on every worker, run on every worker."""

    required = ("tpu_name", "zone", "project", "code_url")

    def _ssh(self, name: str, command: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *self._where(), "--worker=all", f"--command={command}"]

    def plan(self, trial_id: str, train_args: Sequence[str], workdir: str) -> list[list[str]]:
        name = self.settings.tpu_name
        return [self._ssh(name, _setup_command(self.settings)), self._ssh(name, _train_command(train_args))]

    def run(self, trial_id: str, train_args: Sequence[str], workdir: str) -> LaunchOutcome:
        self._check_filled(self.required)
        started, log = time.monotonic(), []
        status = "ok"
        for argv, step in zip(self.plan(trial_id, train_args, workdir), ("install", "train")):
            code, _, err = self._call(argv, log)
            if code != 0:
                status = f"failed: {step} exited {code}: {_last_line(err)}"
                break
        return LaunchOutcome(status, log, time.monotonic() - started)


class QueuedResourcesLauncher(TpuVmLauncher):
    """A fresh queued resource per trial: create, wait for ACTIVE, install, train, delete."""

    required = ("accelerator_type", "runtime_version", "zone", "project", "code_url")

    def _create(self, name: str) -> list[str]:
        argv = ["gcloud", "compute", "tpus", "queued-resources", "create", name, f"--node-id={name}",
                f"--accelerator-type={self.settings.accelerator_type}",
                f"--runtime-version={self.settings.runtime_version}", *self._where()]
        if self.settings.spot:
            argv.append("--spot")
        if self.settings.reserved:
            argv.append("--reserved")
        return argv

    def _describe(self, name: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "queued-resources", "describe", name, *self._where(),
                "--format=value(state.state)"]

    def _delete(self, name: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "queued-resources", "delete", name, *self._where(), "--force", "--quiet"]

    def plan(self, trial_id: str, train_args: Sequence[str], workdir: str) -> list[list[str]]:
        name = resource_name(self.settings.sweep_name, trial_id)
        return [self._create(name), self._describe(name), self._ssh(name, _setup_command(self.settings)),
                self._ssh(name, _train_command(train_args)), self._delete(name)]

    def _state(self, name: str, log: list) -> str:
        code, out, _ = self._call(self._describe(name), log)
        return out.strip().splitlines()[-1].strip().upper() if code == 0 and out.strip() else "UNKNOWN"

    def _wait_active(self, name: str, log: list) -> str | None:
        """None once ACTIVE, else why not."""
        deadline = time.monotonic() + self.settings.timeout_seconds
        while time.monotonic() < deadline:
            state = self._state(name, log)
            if state == "ACTIVE":
                return None
            if state in ("FAILED", "SUSPENDING", "SUSPENDED"):
                return f"queued resource {state}"
            time.sleep(self.settings.poll_seconds)
        return f"not ACTIVE after {self.settings.timeout_seconds:g}s"

    def run(self, trial_id: str, train_args: Sequence[str], workdir: str) -> LaunchOutcome:
        self._check_filled(self.required)
        started, log = time.monotonic(), []
        name = resource_name(self.settings.sweep_name, trial_id)
        try:
            code, _, err = self._call(self._create(name), log)
            if code != 0:
                return LaunchOutcome(f"failed: create exited {code}: {_last_line(err)}", log, time.monotonic() - started)
            problem = self._wait_active(name, log)
            if problem:
                return LaunchOutcome(f"failed: {problem}", log, time.monotonic() - started)
            code, _, err = self._call(self._ssh(name, _setup_command(self.settings)), log)
            if code != 0:
                return LaunchOutcome(f"failed: install exited {code}: {_last_line(err)}", log, time.monotonic() - started)
            code, _, err = self._call(self._ssh(name, _train_command(train_args)), log)
            if code != 0:
                state = self._state(name, log)
                status = "preempted" if state in ("SUSPENDING", "SUSPENDED") else \
                    f"failed: train exited {code}: {_last_line(err)}"
                return LaunchOutcome(status, log, time.monotonic() - started)
            return LaunchOutcome("ok", log, time.monotonic() - started)
        finally:
            self._call(self._delete(name), log)


class XpkLauncher(_Launcher):
    """One xpk workload per trial on an existing GKE cluster; polled until it ends, then deleted."""

    required = ("cluster", "accelerator_type", "zone", "project", "code_url")

    def _xpk_where(self) -> list[str]:
        return [f"--cluster={self.settings.cluster}", f"--project={self.settings.project}", f"--zone={self.settings.zone}"]

    def _create(self, name: str, train_args: Sequence[str]) -> list[str]:
        command = _setup_command(self.settings) + " && " + _train_command(train_args, in_checkout=True)
        return ["xpk", "workload", "create", *self._xpk_where(), f"--workload={name}",
                f"--tpu-type={self.settings.accelerator_type}", f"--num-slices={self.settings.num_slices}",
                f"--command={command}"]

    def _list(self, name: str) -> list[str]:
        return ["xpk", "workload", "list", *self._xpk_where(), f"--filter-by-job={name}"]

    def _delete(self, name: str) -> list[str]:
        return ["xpk", "workload", "delete", *self._xpk_where(), f"--workload={name}"]

    def plan(self, trial_id: str, train_args: Sequence[str], workdir: str) -> list[list[str]]:
        name = resource_name(self.settings.sweep_name, trial_id)
        return [self._create(name, train_args), self._list(name), self._delete(name)]

    def _status(self, name: str, log: list) -> str:
        code, out, _ = self._call(self._list(name), log)
        for line in out.splitlines():
            if name in line:
                for word in ("Completed", "Failed", "Preempted", "Running", "Queued", "Admitted"):
                    if word.lower() in line.lower():
                        return word
        return "Unknown" if code == 0 else "ListFailed"

    def run(self, trial_id: str, train_args: Sequence[str], workdir: str) -> LaunchOutcome:
        self._check_filled(self.required)
        started, log = time.monotonic(), []
        name = resource_name(self.settings.sweep_name, trial_id)
        try:
            code, _, err = self._call(self._create(name, train_args), log)
            if code != 0:
                return LaunchOutcome(f"failed: xpk create exited {code}: {_last_line(err)}", log, time.monotonic() - started)
            deadline = time.monotonic() + self.settings.timeout_seconds
            while time.monotonic() < deadline:
                status = self._status(name, log)
                if status == "Completed":
                    return LaunchOutcome("ok", log, time.monotonic() - started)
                if status == "Failed":
                    return LaunchOutcome("failed: workload failed", log, time.monotonic() - started)
                if status == "Preempted":
                    return LaunchOutcome("preempted", log, time.monotonic() - started)
                time.sleep(self.settings.poll_seconds)
            return LaunchOutcome(f"failed: not finished after {self.settings.timeout_seconds:g}s", log,
                                 time.monotonic() - started)
        finally:
            self._call(self._delete(name), log)


LAUNCHERS = {"tpu-vm": TpuVmLauncher, "queued-resources": QueuedResourcesLauncher, "xpk": XpkLauncher}


def make_launcher(name: str, settings: LauncherSettings, runner: Runner = subprocess_runner) -> _Launcher:
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; known: local, {', '.join(LAUNCHERS)}")
    return LAUNCHERS[name](settings, runner)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
