"""Serving requests as eval batches, built inside a jitted (exportable) function.

A request batch is (histories (B, T) int32 dense item ids, oldest first, left-aligned with 0 after
each row's length; timestamps (B, T) int32 seconds; lengths (B,) int32; users (B,) int32 dense
user index or -1 for a user the training data did not have). history_batch lays each row out as
data.pipeline.history_row does on the host (one segment, target unknown), so a family's
evaluation code runs on it unchanged; the tests check the two agree field by field.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from models.core import family as families
from models.core.layers import force_hand_written_kernels


def history_batch(histories: jax.Array, timestamps: jax.Array, lengths: jax.Array, users: jax.Array,
                  row_len: int) -> dict[str, jax.Array]:
    """The pipeline's token and row fields (data/pipeline.py) of rows of row_len >= T tokens."""
    batch, width = histories.shape
    pad = row_len - width
    index = jnp.arange(row_len)[None, :]
    lengths = jnp.clip(lengths, 0, width)[:, None]
    real = index < lengths
    items = jnp.where(real, jnp.pad(histories, ((0, 0), (0, pad))), 0)
    times = jnp.where(real, jnp.pad(timestamps, ((0, 0), (0, pad))), 0)
    last = index == lengths - 1
    following = jnp.pad(items[:, 1:], ((0, 0), (0, 1)))
    next_times = jnp.where(last, times, jnp.pad(times[:, 1:], ((0, 0), (0, 1))))
    return {
        "items": items,
        "timestamps": times,
        "next_timestamps": jnp.where(real, next_times, 0),
        "targets": jnp.where(real & ~last, following, 0),
        "segment_ids": real.astype(jnp.int32),
        "positions": jnp.where(real, index, 0).astype(jnp.int32),
        "users": jnp.where(real, users[:, None], -1).astype(jnp.int32),
        "eval_target": jnp.zeros((batch,), jnp.int32),
        "eval_position": jnp.maximum(lengths[:, 0] - 1, 0).astype(jnp.int32),
        "eval_user": users.astype(jnp.int32),
        "eval_valid": lengths[:, 0] > 0,
    }


def serving_batch(config: Any, histories: jax.Array, timestamps: jax.Array, lengths: jax.Array, users: jax.Array,
                  row_len: int) -> dict[str, jax.Array]:
    """The eval batch of config's family (its device fields) for a request batch."""
    family = families.of(config)
    fields = family.eval_fields(config)
    return family.device_batch(config, history_batch(histories, timestamps, lengths, users, row_len), fields, jnp)


@contextlib.contextmanager
def portable_kernels() -> Iterator[None]:
    """Trace with the portable forms of every layer, not the XLA:CPU ones of models/core/layers.py: an
    exported function lowered for several platforms runs the same code on each."""
    with force_hand_written_kernels(False):
        yield
