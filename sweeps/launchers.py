"""Launchers that run one sweep trial on TPU pods: an existing TPU VM, a queued resource, or an
xpk workload on GKE (GPU clusters under SLURM: sweeps/slurm.py). Each plans its exact argv lists first (what `--dry-run` prints) and then runs
them; whatever it creates is deleted whatever happens to the trial.

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

import dataclasses
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from scaling.config import ConfigError

Runner = Callable[[Sequence[str]], "tuple[int, str, str]"]
PLACEHOLDER = re.compile(r"^<[A-Z_]+>$")
RUNTIME_FOR_FAMILY = {"v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
CHECKOUT = "lab"  # the worker-side directory of the code
VENV = "$HOME/lab-venv"
QR_WAITING = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING")
QR_PREEMPTED = ("SUSPENDING", "SUSPENDED")
QR_DEAD = ("FAILED", "DELETING", *QR_PREEMPTED)


def subprocess_runner(argv: Sequence[str]) -> tuple[int, str, str]:
    """Runs argv with no stdin (a prompt fails instead of hanging) and returns (code, out, err)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    return done.returncode, done.stdout, done.stderr


REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


def pinned_jax_version(requirements: Path = REQUIREMENTS) -> str:
    """The `jax==V` of requirements.txt: what workers install as jax[tpu]==V."""
    for line in requirements.read_text().splitlines():
        if match := re.fullmatch(r"jax==([\w.]+)", line.split("#")[0].strip()):
            return match.group(1)
    raise ConfigError(f"{requirements} pins no jax==VERSION")


@dataclasses.dataclass(frozen=True)
class LauncherSettings:
    """Where and how trials run. Unset values stay <PLACEHOLDERS> so any spec can be dry-run;
    running needs them filled (by flags or the spec's launcher block)."""

    accelerator_type: str = "<ACCELERATOR_TYPE>"  # e.g. v5litepod-16, v5p-32
    zone: str = "<ZONE>"
    project: str = "<PROJECT>"
    runtime_version: str = "<RUNTIME_VERSION>"  # derived from accelerator_type when known
    tpu_name: str = "<TPU_NAME>"  # tpu-vm launcher: an existing TPU VM
    cluster: str = "<CLUSTER>"  # xpk launcher: an existing GKE cluster
    num_slices: int = 1
    spot: bool = False
    reserved: bool = False
    code_url: str = "<CODE_URL>"  # a git URL the workers can clone
    code_ref: str = "main"  # branch, tag or commit to check out
    jax_version: str = dataclasses.field(default_factory=pinned_jax_version)
    python_version: str = "3.12"
    docker_image: str = "python:3.12"  # xpk: the image the workload runs in (has git and pip)
    sweep_name: str = "sweep"
    poll_seconds: float = 30.0
    timeout_seconds: float = 6 * 3600.0  # queued resource: wait for ACTIVE; xpk: the whole workload
    install_attempts: int = 3  # a fresh VM may refuse ssh for a minute after ACTIVE
    preemption_retries: int = 5  # a preempted trial is launched again (resuming) this many times
    allow_local_workdir: bool = False  # only when the workers share this machine's disk (tests)
    # SLURM (sweeps/slurm.py): one task per node; the workdir on a filesystem every node mounts
    partition: str = "<PARTITION>"
    account: str = ""
    nodes: int = 1
    gpus_per_node: int = 8
    time_limit: str = "24:00:00"  # sbatch --time
    container_image: str = ""  # srun --container-image (pyxis/enroot), if the cluster runs containers
    setup: str = ""  # shell commands before training, e.g. "module load cuda; source ~/lab-venv/bin/activate"
    xla_flags: str = ""  # exported as XLA_FLAGS, e.g. "--xla_gpu_enable_latency_hiding_scheduler=true"
    code_dir: str = ""  # the checkout on the cluster (default: the driver's)


def settings_from(flags: Mapping[str, Any], spec_launcher: Mapping[str, Any]) -> LauncherSettings:
    """Flags (None = not given) win over the spec's launcher block, which wins over placeholders."""
    given = {k: v for k, v in flags.items() if v is not None}
    for source, values in (("spec's launcher block", spec_launcher), ("flags", given)):
        _check_values(source, values)
    merged = {**spec_launcher, **given}
    if merged.get("spot") and merged.get("reserved"):
        raise ConfigError("launcher settings: spot and reserved exclude each other; give one")
    settings = LauncherSettings(**merged)
    family = settings.accelerator_type.split("-")[0]
    if PLACEHOLDER.match(settings.runtime_version) and family in RUNTIME_FOR_FAMILY:
        settings = dataclasses.replace(settings, runtime_version=RUNTIME_FOR_FAMILY[family])
    return settings


def _check_values(source: str, values: Mapping[str, Any]) -> None:
    fields = {f.name: type(f.default) for f in dataclasses.fields(LauncherSettings)}
    for name, value in values.items():
        if name not in fields:
            raise ConfigError(f"unknown launcher setting {name!r} in the {source}; known: {', '.join(sorted(fields))}")
        wanted = fields[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if wanted is float else \
            type(value) is wanted
        if not ok:
            raise ConfigError(f"launcher setting {name!r} in the {source} should be a {wanted.__name__}, got {value!r}")


def resource_name(sweep_name: str, trial_id: str, max_length: int = 63) -> str:
    """A valid GCP / xpk name: lowercase letters, digits and dashes, a letter first, no dash last."""
    def clean(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")

    trial = clean(trial_id)[: max_length - 2].rstrip("-") or "trial"
    stem = clean(sweep_name) or "sweep"
    if not stem[0].isalpha():
        stem = "s-" + stem
    stem = stem[: max(max_length - len(trial) - 1, 1)].rstrip("-")
    return f"{stem}-{trial}"


@dataclasses.dataclass(frozen=True)
class LaunchOutcome:
    status: str  # "ok", "failed: reason" or "preempted"
    commands_run: list
    seconds: float


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


class Launcher:
    """Runs one trial somewhere else; `plan` lists the commands `run` would run, in order."""

    required: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: LauncherSettings, runner: Runner = subprocess_runner):
        self.settings, self.runner = settings, runner

    def plan(self, trial_id: str, train_args: Sequence[str], workdir: str) -> list[list[str]]:
        raise NotImplementedError

    def dry_run_text(self, trial_id: str, train_args: Sequence[str], workdir: str) -> str:
        """What `--dry-run` prints for a trial: its commands, one per line."""
        return "".join(shlex.join(argv) + "\n" for argv in self.plan(trial_id, train_args, workdir))

    def run(self, trial_id: str, train_args: Sequence[str], workdir: str) -> LaunchOutcome:
        self.check_ready(workdir)
        started, log = time.monotonic(), []
        status = self._run(trial_id, train_args, log)
        return LaunchOutcome(status, log, time.monotonic() - started)

    def _run(self, trial_id: str, train_args: Sequence[str], log: list) -> str:
        raise NotImplementedError

    def check_ready(self, workdir: str) -> None:
        """Raises ConfigError when a setting is still a placeholder or the workers could not reach workdir."""
        missing = [n for n in self.required if PLACEHOLDER.match(str(getattr(self.settings, n)))]
        if missing:
            flags = ", ".join("--" + n.replace("_", "-") for n in missing)
            raise ConfigError(f"launcher settings not given: {flags} (flags or the spec's launcher block)")
        if "://" not in workdir and not self.settings.allow_local_workdir:
            raise ConfigError(f"workdir {workdir} is on this machine; TPU workers need one they can write, "
                              "e.g. --workdir gs://BUCKET/PATH")

    def _call(self, argv: list[str], log: list) -> tuple[int, str, str]:
        log.append(argv)
        return self.runner(argv)

    def _wait(self) -> None:
        time.sleep(self.settings.poll_seconds)

    def _delete_or_warn(self, argv: list[str], log: list, what: str) -> None:
        """Deletes; a failure other than 'not found' is told loudly, since the resource may cost money."""
        code, out, err = self._call(argv, log)
        if code != 0 and not re.search(r"NOT_FOUND|not found|does not exist", err + out, re.IGNORECASE):
            print(f"warning: could not delete {what} ({_last_line(err)}); delete it by hand: {shlex.join(argv)}",
                  file=sys.stderr)


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
            return f"failed: install exited {code}: {_last_line(err)}"
        code, _, err = self._call(train, log)
        if code == 0:
            return "ok"
        return "preempted" if self._preempted(name, log) else f"failed: train exited {code}: {_last_line(err)}"

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
                return f"failed: create exited {code}: {_last_line(err)}"
            problem = self._wait_active(name, log)
            return f"failed: {problem}" if problem else self._install_and_train(name, train_args, log)
        finally:
            self._delete_or_warn(self._delete(name), log, f"queued resource {name}")

    def _state(self, name: str, log: list) -> tuple[str, str]:
        """(STATE, error text); STATE is UNKNOWN when describe fails."""
        code, out, err = self._call(self._describe(name), log)
        lines = out.strip().splitlines()
        return (lines[-1].strip().upper(), "") if code == 0 and lines else ("UNKNOWN", _last_line(err))

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
                return f"failed: xpk create exited {code}: {_last_line(err)}"
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
                return f"failed: xpk workload list exited {code}: {_last_line(err or out)}"
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


LAUNCHERS: dict[str, type[Launcher]] = {"tpu-vm": TpuVmLauncher, "queued-resources": QueuedResourcesLauncher,
                                        "xpk": XpkLauncher}


def make_launcher(name: str, settings: LauncherSettings, runner: Runner = subprocess_runner) -> Launcher:
    from sweeps.slurm import SlurmLauncher  # a module of its own; it builds on this one

    known = {**LAUNCHERS, "slurm": SlurmLauncher}
    if name not in known:
        raise ConfigError(f"unknown launcher {name!r}; known: local, {', '.join(known)}")
    return known[name](settings, runner)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
