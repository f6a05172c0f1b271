"""Orbax checkpoints of a trial: train state (sharded arrays) + data iterator state, keep-N,
automatic resume (from the newest checkpoint that restores), restore onto any mesh by passing
the target shardings. Orbax writes a step under a temporary name and renames it when complete,
so a write cut short by a kill never looks like a checkpoint."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from absl import logging as absl_logging
import orbax.checkpoint as ocp
from etils import epath

from scaling.services.workdir import is_local


def absolute(directory: epath.PathLike) -> epath.Path:
    """`directory` as orbax requires it: a relative local path made absolute, gs:// as is."""
    return epath.Path(os.path.abspath(os.fspath(directory))) if is_local(directory) else epath.Path(directory)


def manager(directory: epath.PathLike, keep: int, asynchronous: bool = True) -> ocp.CheckpointManager:
    """A manager of `directory` (local or gs://)."""
    path = absolute(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True)
    return ocp.CheckpointManager(path, options=options, item_names=("state", "data"))


def save(checkpoints: ocp.CheckpointManager, step: int, state: Any, progress: dict) -> None:
    """Start saving (asynchronously when the manager is); wait_until_finished() before exit."""
    checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=ocp.args.JsonSave(progress)))


def restore(checkpoints: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state laid out as abstract_state's shardings say, the JSON saved beside it) of `step`."""
    restored = checkpoints.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]


def restore_latest(checkpoints: ocp.CheckpointManager, abstract_state: Any,
                   warn: Callable[[str], None]) -> tuple[int, Any, dict] | None:
    """(step, state, saved JSON) of the newest checkpoint that restores, or None when there is
    none. A checkpoint that does not (truncated, half-written, unreadable) is moved out of the
    step directory to WORKDIR/corrupt_checkpoints/ with a warning, and the one before it is tried."""
    for step in sorted(checkpoints.all_steps(), reverse=True):
        try:
            state, saved = restore(checkpoints, step, abstract_state)
            return step, state, saved
        except Exception as error:  # orbax, tensorstore and json each raise their own kind
            reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            aside = _move_aside(epath.Path(checkpoints.directory), step)
            warn(f"warning: checkpoint of step {step} cannot be restored ({reason}); moved to {aside}, "
                 f"trying the one before")
            checkpoints.reload()
    return None


def _move_aside(directory: epath.Path, step: int) -> epath.Path:
    aside = directory.parent / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
    if jax.process_index() == 0:
        aside.parent.mkdir(parents=True, exist_ok=True)
        (directory / str(step)).rename(aside)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    return aside


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` (arrays or abstract values) carrying `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore_params(directory: epath.PathLike, step: int | None = None) -> tuple[Any, int]:
    """(the parameters of a trial's checkpoint as host numpy arrays, its step): the newest step
    unless one is named; no model, mesh or optimizer needed. FileNotFoundError when there is none."""
    path = absolute(directory)
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "state").is_dir()) \
        if path.is_dir() else []
    if not steps or (step is not None and step not in steps):
        raise FileNotFoundError(f"no checkpoint {'' if step is None else f'of step {step} '}in {path}")
    step = steps[-1] if step is None else step
    checkpointer = ocp.PyTreeCheckpointer()
    state_path = path / str(step) / "state"
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # reading one item of a step warns of the step's metadata
    try:
        tree = checkpointer.metadata(state_path).item_metadata
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), dict(tree))
        state = checkpointer.restore(state_path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    finally:
        absl_logging.set_verbosity(verbosity)
    return state["params"], step
