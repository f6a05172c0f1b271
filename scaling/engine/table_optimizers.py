"""Sparse updates of catalogue tables (train.table_optimizer): only the rows a step touches are
read and written, as recommender systems train their embedding tables.

- lazy_adam: Adam's moments of the touched rows only (TensorFlow Addons' LazyAdam); bias
  correction by the global step, so a row's first update equals dense Adam's. Rows not touched
  keep their moments and values, where dense Adam would keep moving them on old momentum.
- rowwise_adagrad: one accumulator per row, the mean over the row of the squared gradient
  (FBGEMM / TorchRec's row-wise Adagrad): w -= lr g / (sqrt(acc) + eps).

The step's touched rows come as a models.core.tables.RowSubset: ids (K,) ascending, ids past the
touched rows equal to the table's row count, which every read fills with zeros and every write
drops. On a table split by rows, each device reads and writes only its own rows. When the step
looks up more rows than the table has, the subset is the whole table with its touched rows
marked: every row is computed as in a dense update and only the touched ones are kept.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from models.core.tables import RowSubset

SPARSE = ("lazy_adam", "rowwise_adagrad")


def init(kind: str, table: jax.Array) -> dict[str, jax.Array]:
    """The optimizer state of one table."""
    if kind == "lazy_adam":
        return {"mu": jnp.zeros_like(table), "nu": jnp.zeros_like(table)}
    if kind == "rowwise_adagrad":
        return {"accumulator": jnp.zeros(table.shape[:1], table.dtype)}
    raise ValueError(f"unknown table optimizer {kind!r}")


def _rows(array: jax.Array, ids: jax.Array) -> jax.Array:
    return jnp.take(array, ids, axis=0, mode="fill", fill_value=0)


def _write(array: jax.Array, ids: jax.Array, rows: jax.Array) -> jax.Array:
    return array.at[ids].set(rows.astype(array.dtype), mode="drop")


def update(kind: str, train: Any, rate: Callable[[jax.Array], jax.Array], step: jax.Array, table: jax.Array,
           state: dict[str, jax.Array], touched: RowSubset, grads: jax.Array) -> tuple[jax.Array, dict]:
    """(table, state) after one step on the touched rows; grads (K, D) their gradient; step: the
    0-based step number (rate(step) is this step's learning rate, as optax schedules count)."""
    ids, rows, mask = touched.ids, touched.rows, touched.touched
    if mask is None:
        read, write = (lambda array: _rows(array, ids)), (lambda array, values: _write(array, ids, values))
    else:  # the whole table: every row computed, the touched ones kept
        read = lambda array: array
        write = lambda array, values: jnp.where(mask.reshape(-1, *[1] * (array.ndim - 1)), values.astype(array.dtype), array)
    lr = rate(step)
    if kind == "lazy_adam":
        mu = train.beta1 * read(state["mu"]) + (1.0 - train.beta1) * grads
        nu = train.beta2 * read(state["nu"]) + (1.0 - train.beta2) * jnp.square(grads)
        t = (step + 1).astype(jnp.float32)
        mu_hat = mu / (1.0 - train.beta1 ** t)
        nu_hat = nu / (1.0 - train.beta2 ** t)
        new_rows = rows - lr * (mu_hat / (jnp.sqrt(nu_hat) + train.eps) + train.weight_decay * rows)
        return write(table, new_rows), {"mu": write(state["mu"], mu), "nu": write(state["nu"], nu)}
    if kind == "rowwise_adagrad":
        accumulator = read(state["accumulator"]) + jnp.mean(jnp.square(grads), axis=1)
        new_rows = rows - lr * grads / (jnp.sqrt(accumulator)[:, None] + train.eps)
        return write(table, new_rows), {"accumulator": write(state["accumulator"], accumulator)}
    raise ValueError(f"unknown table optimizer {kind!r}")
