"""Orbax checkpoints of a trial: train state (sharded arrays) + data iterator state, keep-N,
automatic resume, restore onto any mesh by passing the target shardings."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging as absl_logging
import orbax.checkpoint as ocp
from etils import epath


def manager(directory: epath.PathLike, keep: int, asynchronous: bool = True) -> ocp.CheckpointManager:
    """A manager of `directory`; a relative local path is made absolute, as orbax requires."""
    path = epath.Path(directory)
    if "://" not in str(directory):
        path = epath.Path(os.path.abspath(os.fspath(directory)))
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


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` (arrays or abstract values) carrying `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore_params(directory: epath.PathLike, step: int | None = None) -> tuple[Any, int]:
    """(the parameters of a trial's checkpoint as host numpy arrays, its step): the newest step
    unless one is named; no model, mesh or optimizer needed. FileNotFoundError when there is none."""
    path = epath.Path(os.path.abspath(os.fspath(directory)))
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
