"""Orbax checkpoints of a trial: train state (sharded arrays) + data iterator state, keep-N,
automatic resume, restore onto any mesh by passing the target shardings."""

from __future__ import annotations

import os
from typing import Any

import jax
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
