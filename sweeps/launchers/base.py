"""What every launcher shares: its settings (flags or a spec's launcher block), the runner of
its commands, and the Launcher base class that plans a trial's commands and then runs them.
The launchers: TPU pods in sweeps/launchers/tpu.py, GPU clusters under SLURM in
sweeps/launchers/slurm.py; the registry by name in sweeps/launchers/__init__.py."""

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


def subprocess_runner(argv: Sequence[str]) -> tuple[int, str, str]:
    """Runs argv with no stdin (a prompt fails instead of hanging) and returns (code, out, err)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: command not found"
    return done.returncode, done.stdout, done.stderr


REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements.txt"


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
    # SLURM (sweeps/launchers/slurm.py): one task per node; the workdir on a filesystem every node mounts
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
            print(f"warning: could not delete {what} ({last_line(err)}); delete it by hand: {shlex.join(argv)}",
                  file=sys.stderr)

def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
