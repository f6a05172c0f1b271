"""Launchers that run one sweep trial somewhere else, by name: TPU pods (tpu.py: an existing TPU
VM, a queued resource, an xpk workload on GKE) and GPU clusters under SLURM (slurm.py), on the
settings and base class of base.py."""

from __future__ import annotations

from config.fields import ConfigError
from sweeps.launchers.base import Launcher, LauncherSettings, Runner, subprocess_runner
from sweeps.launchers.slurm import SlurmLauncher
from sweeps.launchers.tpu import QueuedResourcesLauncher, TpuVmLauncher, XpkLauncher

LAUNCHERS: dict[str, type[Launcher]] = {"tpu-vm": TpuVmLauncher, "queued-resources": QueuedResourcesLauncher,
                                        "xpk": XpkLauncher, "slurm": SlurmLauncher}


def make_launcher(name: str, settings: LauncherSettings, runner: Runner = subprocess_runner) -> Launcher:
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; known: local, {', '.join(LAUNCHERS)}")
    return LAUNCHERS[name](settings, runner)
