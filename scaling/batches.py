"""Host batches (numpy, from data/pipeline.py) -> global jax.Arrays on the mesh."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from scaling.mesh import batch_sharding

# Fields the jitted steps read; the rest of a pipeline batch stays on the host.
TRAIN_FIELDS = ("items", "timestamps", "next_timestamps", "targets", "segment_ids", "positions")
EVAL_FIELDS = TRAIN_FIELDS + ("eval_target", "eval_position", "eval_valid")


def relative_timestamps(batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps minus each row's earliest real one, as int32: only differences within a row
    matter (HSTU's time buckets), and epoch seconds would not survive JAX's default int32."""
    real = batch["segment_ids"] > 0
    big = np.iinfo(np.int64).max
    base = np.min(np.where(real, batch["timestamps"], big), axis=1, keepdims=True)
    base = np.where(base == big, 0, base)
    shift = lambda t: np.where(real, np.clip(t - base, 0, np.iinfo(np.int32).max), 0).astype(np.int32)
    return shift(batch["timestamps"]), shift(batch["next_timestamps"])


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, fields: tuple[str, ...]) -> dict[str, jax.Array]:
    """This process's rows of `fields` as slices of global arrays split over data x fsdp."""
    host = {name: np.asarray(batch[name]) for name in fields}
    host["timestamps"], host["next_timestamps"] = relative_timestamps(batch)
    return {
        name: jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
        for name, value in host.items()
    }


def segment_lengths(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Lengths of every segment (user window) in a batch, for FLOP counting."""
    segments = batch["segment_ids"]
    row_offset = (np.arange(segments.shape[0]) * (segments.shape[1] + 1))[:, None]
    ids = np.where(segments > 0, segments + row_offset, 0).ravel()
    counts = np.bincount(ids)
    return counts[1:][counts[1:] > 0]
