"""What a sweep needs on an accelerator, before it is queued: per trial, the per-device memory of
its compiled train step against the accelerator's HBM, and its chip-hours at an assumed MFU.

Memory: each distinct step (trials that differ only in their step counts share one) is compiled
on as many simulated CPU devices as the accelerator has JAX devices, as the accelerator would run
it (one micro-batch, the portable kernels), and XLA's memory analysis gives arguments + outputs -
aliased + temporaries per device (scaling/aot.py). XLA:CPU lays out and fuses differently from a
TPU or GPU compiler, so this is an estimate; a step far under the HBM fits, one near it should be
compiled on the target first. Chip-hours: the trial's planned model FLOPs / (peak x MFU).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Sequence

from scaling import aot
from scaling.config import ConfigError
from scaling.engine import hardware
from sweeps.spec import Trial, train_flops_per_step


# train fields that change numbers in the compiled step, never its shapes or memory
NOT_SHAPING = ("steps", "epochs", "learning_rate", "table_learning_rate", "beta1", "beta2", "eps", "weight_decay",
               "schedule", "warmup_steps", "temperature", "seed", "log_every", "eval_every", "eval_points",
               "checkpoint_every", "keep_checkpoints")


def _step_shape(trial: Trial) -> str:
    """The trial's config with what its compiled step's memory does not depend on set aside (a
    tuned grid's learning rates compile once)."""
    defaults = type(trial.config.train)()
    train = dataclasses.replace(trial.config.train, **{name: getattr(defaults, name) for name in NOT_SHAPING})
    return json.dumps(dataclasses.replace(trial.config, train=train).to_dict(), sort_keys=True)


def plan(trials: Sequence[Trial], num_items: int, accelerator: str, mfu: float,
         log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(per trial: hbm_bytes, hbm_fraction, fits, chip_hours; the totals and the accelerator)."""
    try:
        kind, devices = hardware.parse_accelerator(accelerator)
    except ValueError as error:
        raise ConfigError(f"--accelerator: {error}") from None
    if not 0.0 < mfu <= 1.0:
        raise ConfigError(f"--mfu {mfu}: must be in (0, 1]")
    shapes: dict[str, Trial] = {}
    for trial in trials:
        shapes.setdefault(_step_shape(trial), trial)
    log(f"compiling {len(shapes)} distinct steps on {devices} simulated devices ({accelerator})")
    compiled = dict(zip(shapes, aot.compile_in_subprocess([t.config for t in shapes.values()], num_items, devices)))
    rows, chip_hours = [], 0.0
    for trial in trials:
        memory = compiled[_step_shape(trial)]
        steps = trial.config.train.steps
        flops = steps * train_flops_per_step(trial.config, num_items) if steps else None
        hours = flops / (kind.peak_bf16 * mfu) / 3600.0 if flops else None
        chip_hours += hours or 0.0
        rows.append({"hbm_bytes": memory["peak_bytes"], "hbm_fraction": memory["peak_bytes"] / kind.hbm_bytes,
                     "fits": memory["peak_bytes"] <= kind.hbm_bytes, "chip_hours": hours,
                     "catalogue_tables": memory["catalogue_tables"]})
    totals = {
        "accelerator": accelerator, "devices": devices, "device_kind": kind.device_kind,
        "hbm_bytes_per_device": kind.hbm_bytes, "peak_flops_per_device": kind.peak_bf16, "source": kind.source,
        "assumed_mfu": mfu, "chip_hours": chip_hours, "wall_hours": chip_hours / devices,
        "trials_over_hbm": sum(not row["fits"] for row in rows),
        "max_hbm_bytes": max(row["hbm_bytes"] for row in rows) if rows else 0,
        "trials_without_steps": sum(row["chip_hours"] is None for row in rows),
    }
    return rows, totals
