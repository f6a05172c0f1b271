"""Catalogue tables: tables whose rows grow with the catalogue (the item table, logical axis
axes.TABLE_ROWS). Their size, their layout over the devices, and scoring every item without a
(rows x catalogue) array.

A catalogue table has num_items + 1 real rows (row 0: the padding item). From
ROW_SHARDING_MIN_ROWS rows it is stored padded to a multiple of ROW_ALIGN (the extra rows are
zeros, never looked up and never scored) and its rows are split over every device of the mesh,
whatever the mesh (embedding model parallelism, as TorchRec and TPU embedding layers do); the
rules table of scaling/engine/mesh.py applies `row_axes` to it. ROW_ALIGN = 2^10 x 3, so any device
count 2^a 3^b that divides it splits the rows evenly. The padded size depends on the catalogue
only, so a checkpoint restores onto any mesh, and the real rows are initialised as if unpadded,
so every mesh starts from the same numbers.

Scoring every item (evaluation ranks, the eval loss, serving's top k) goes through the table in
chunks of at most SCORE_CHUNK_ROWS rows, on each device over its own rows when the rows are
split (jax.shard_map), so the temporaries are (batch x chunk) whatever the catalogue's size.

Sparse updates (train.table_optimizer lazy_adam / rowwise_adagrad) hand the model a RowSubset in
place of the table: the rows a step touches, gathered once; `take_rows` looks rows up in either.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from models.core.layers import l2_normalize

ROW_SHARDING_MIN_ROWS = 1 << 16  # tables of at least this many rows are padded and split by rows
ROW_ALIGN = 3072  # 2^10 x 3
SCORE_CHUNK_ROWS = 8192  # items scored at once per device: (batch x chunk) scores


def padded_rows(rows: int) -> int:
    """The stored row count of a catalogue table of `rows` real rows."""
    if rows < ROW_SHARDING_MIN_ROWS:
        return rows
    return -(-rows // ROW_ALIGN) * ROW_ALIGN


def padded_init(init: Callable[..., jax.Array], rows: int) -> Callable[..., jax.Array]:
    """`init` of the `rows` real rows, then zero rows up to the stored shape: the real rows get
    the values an unpadded table would."""
    def padded(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        real = init(key, (rows, *shape[1:]), dtype)
        return jnp.pad(real, ((0, shape[0] - rows),) + ((0, 0),) * (len(shape) - 1))
    return padded


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RowSubset:
    """Some rows of a catalogue table of `table_rows` stored rows: ids (K,) ascending, the ones
    past the touched rows equal to table_rows (a row that does not exist); rows (K, D) their
    values (zeros past the touched ones). Or, when a step's lookups outnumber the table's rows,
    the whole table: ids every row, rows the table, `touched` (rows,) bool the rows looked up."""

    ids: jax.Array
    rows: jax.Array
    table_rows: int = dataclasses.field(metadata={"static": True})
    touched: jax.Array | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the table the rows come from."""
        return (self.table_rows, self.rows.shape[1])


def gather_rows(table: jax.Array, ids: jax.Array) -> RowSubset:
    """The distinct rows among `ids` (any shape) as a RowSubset of at most min(ids.size, rows)
    rows; on a table split by rows each device reads only its own rows. Distinct ids by a sort
    of the ids, or, when the table has no more rows than there are ids, the whole table with
    the touched rows marked (no gather or deduplication: a dense update, masked)."""
    rows, ids = table.shape[0], ids.reshape(-1)
    mesh, split, _ = _layout(table)
    # whole on every device: XLA splits the sort's and the cumulative sum's inputs over the mesh
    # as a reduce-window as long as the input, quadratic in the touched rows
    whole = (lambda x: x) if mesh.empty else (
        lambda x: jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, PartitionSpec())))
    ids = whole(ids)
    if rows <= ids.size:  # at least as many lookups as rows: the whole table, its touched rows marked
        touched = jnp.zeros((rows,), bool).at[ids].set(True, mode="drop")
        return RowSubset(jnp.arange(rows, dtype=ids.dtype), table, rows, touched)
    unique = jnp.unique(ids, size=ids.size, fill_value=rows)
    gathered = jnp.take(table, whole(unique), axis=0, mode="fill", fill_value=0)
    if split and gathered.shape[0] % math.prod(mesh.shape[name] for name in split) == 0:
        gathered = jax.lax.with_sharding_constraint(gathered, jax.sharding.NamedSharding(mesh, PartitionSpec(split, None)))
    return RowSubset(unique, gathered, rows)


def take_rows(table: jax.Array | RowSubset, ids: jax.Array) -> jax.Array:
    """table[ids] (shape ids.shape + (D,)) from a whole table or a RowSubset holding every id."""
    if isinstance(table, RowSubset) and table.touched is None:
        return jnp.take(table.rows, jnp.searchsorted(table.ids, ids), axis=0, mode="clip")
    return jnp.take(table.rows if isinstance(table, RowSubset) else table, ids, axis=0, mode="clip")


def unit_rows(table: jax.Array | RowSubset, lookups: int) -> Callable[[jax.Array], jax.Array]:
    """ids -> L2-normalised rows of `table`, for a caller about to look up `lookups` rows:
    normalising the table first when it has fewer rows than that, else only the rows looked up."""
    if isinstance(table, RowSubset):
        table = dataclasses.replace(table, rows=l2_normalize(table.rows))
        return lambda ids: take_rows(table, ids).astype(jnp.float32)
    if table.shape[0] <= lookups:
        normalised = l2_normalize(table).astype(jnp.float32)
        return lambda ids: take_rows(normalised, ids)
    return lambda ids: l2_normalize(take_rows(table, ids)).astype(jnp.float32)


def row_axes(rows: int, mesh: Any) -> tuple[str, ...] | None:
    """The mesh axes a catalogue table of `rows` stored rows is split over by rows: every axis of
    the mesh (dropping the last ones until their product divides the rows) from
    ROW_SHARDING_MIN_ROWS rows; None below that (the rules table's ordinary rule applies)."""
    if rows < ROW_SHARDING_MIN_ROWS or mesh is None or not mesh.shape:
        return None
    names = [name for name in mesh.axis_names if mesh.shape[name] > 1]
    while names and rows % math.prod(mesh.shape[name] for name in names):
        names.pop()
    return tuple(names)


def _layout(table: jax.Array) -> tuple[Any, tuple[str, ...], int]:
    """(the mesh being traced under, the axes `table`'s rows are split over there, rows per shard)."""
    mesh = jax.sharding.get_abstract_mesh()
    split = () if mesh.empty else row_axes(table.shape[0], mesh) or ()
    return mesh, split, table.shape[0] // math.prod(mesh.shape[name] for name in split)


def _scan_chunks(table: jax.Array, first_id: jax.Array | int, fn: Callable, carry: Any) -> Any:
    """carry = fn(carry, rows (C, D), ids (C,), fresh (C,) bool) over chunks of C consecutive
    rows; ids are global row ids (first_id + local index). The last chunk is moved back to end
    at the table's end; rows it repeats are not fresh."""
    rows = table.shape[0]
    size = min(SCORE_CHUNK_ROWS, rows)
    local = jnp.arange(size)

    def body(index: jax.Array, carry: Any) -> Any:
        nominal = index * size
        start = jnp.minimum(nominal, rows - size)
        block = jax.lax.dynamic_slice_in_dim(table, start, size)
        return fn(carry, block, first_id + start + local, start + local >= nominal)

    count = -(-rows // size)
    return body(0, carry) if count == 1 else jax.lax.fori_loop(0, count, body, carry)


def _history_mask(history: jax.Array, ids: jax.Array) -> jax.Array:
    """(B, C) bool: column c is one of the row's history items; ids: the chunk's consecutive ids."""
    size = ids.shape[0]
    local = history - ids[0]
    local = jnp.where((local >= 0) & (local < size), local, size)  # outside the chunk: dropped
    rows = jnp.arange(history.shape[0])[:, None]
    return jnp.zeros((history.shape[0], size), bool).at[rows, local].set(True, mode="drop")


def _scores(query: jax.Array, rows: jax.Array) -> jax.Array:
    return query @ l2_normalize(rows).astype(jnp.float32).T


def _real(ids: jax.Array, fresh: jax.Array, num_items: int) -> jax.Array:
    return fresh & (ids >= 1) & (ids <= num_items)


def _finite(top: jax.Array) -> jax.Array:
    """A running maximum of logits, 0 where nothing was seen yet (-inf), to shift exponents by."""
    return jnp.where(jnp.isneginf(top), 0.0, top)


def _rescaled(total: jax.Array, top: jax.Array, new_top: jax.Array) -> jax.Array:
    """A sum of exp(logit - top) re-expressed as one of exp(logit - new_top) (new_top >= top)."""
    return total * jnp.exp(_finite(top) - _finite(new_top))


def _on_shards(fn: Callable, table: jax.Array, *replicated: jax.Array) -> Any:
    """fn(rows, first row id, *replicated, combine) on each device's rows of `table` when they
    are split over the mesh (jax.shard_map), else once on the whole table. combine(x, how)
    combines per-shard results over the shards: how is "sum", "max" or "concat" (on axis 1), or
    with "vary" marks a fresh value as the shard's own (a loop's initial carry)."""
    mesh, split, _ = _layout(table)
    if not split:
        return fn(table, 0, *replicated, lambda x, how: x)  # one shard: nothing to combine

    def combine(x: Any, how: str) -> Any:
        if how == "vary":  # a fresh value becomes this shard's own (a loop carry that will be)
            return jax.tree.map(lambda v: jax.lax.pcast(v, split, to="varying"), x)
        if how == "sum":
            return jax.lax.psum(x, split)
        if how == "max":
            return jax.lax.pmax(x, split)
        # all shards' x side by side on axis 1, in shard order: each writes its own slot of a sum
        shards = math.prod(mesh.shape[name] for name in split)
        slots = jnp.zeros((x.shape[0], shards * x.shape[1]), x.dtype)
        mine = jax.lax.dynamic_update_slice_in_dim(slots, x, jax.lax.axis_index(split) * x.shape[1], axis=1)
        return jax.lax.psum(mine, split)

    def local(rows: jax.Array, *args: jax.Array) -> Any:
        return fn(rows, jax.lax.axis_index(split) * rows.shape[0], *args, combine)

    whole = PartitionSpec()
    specs = (PartitionSpec(split, None),) + (whole,) * len(replicated)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=whole)(table, *replicated)


def target_ranks(query: jax.Array, table: jax.Array, target: jax.Array, history: jax.Array, num_items: int,
                 temperature: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per row, the target's 1-based rank among items 1..num_items by cosine score with the query,
    with the items of the row's history other than the target excluded (the lab's rule) and with
    them kept (the published papers' rule), and the full-softmax loss
    -log softmax(scores / temperature)[target] over items 1..num_items.

    query (B, D) unit vectors; table (rows, D) the raw catalogue table; target (B,); history
    (B, L) item ids (0 = none). With the rows (of each device) in one chunk, the target's score
    is read from the same score matrix as the others, as the plain (B x catalogue) computation
    does; with more chunks it is the dot product with its own row, so an item within float
    rounding of it may rank either side of it (as it may between any two matmul shapes).
    """
    query = query.astype(jnp.float32)
    history = jnp.where(history == target[:, None], 0, history)
    one_chunk = _layout(table)[2] <= SCORE_CHUNK_ROWS
    own_score = jnp.zeros(target.shape, jnp.float32) if one_chunk else \
        jnp.einsum("bd,bd->b", query, l2_normalize(jnp.take(table, target, axis=0)).astype(jnp.float32))

    def per_shard(rows, first, query, target, history, own_score, combine):
        def accumulate(carry, scores, ids, fresh):
            higher, higher_with_history, top, total = carry
            real = _real(ids, fresh, num_items)[None, :]
            above = real & (ids[None, :] != target[:, None]) & (scores > target_score[:, None])
            higher = higher + jnp.sum(above & ~_history_mask(history, ids), axis=1)
            higher_with_history = higher_with_history + jnp.sum(above, axis=1)
            logits = jnp.where(real, scores / temperature, -jnp.inf)
            new_top = jnp.maximum(top, jnp.max(logits, axis=1))
            total = _rescaled(total, top, new_top) + jnp.sum(jnp.exp(logits - _finite(new_top)[:, None]), axis=1)
            return higher, higher_with_history, new_top, total

        batch = query.shape[0]
        start = combine((jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32), jnp.full((batch,), -jnp.inf),
                         jnp.zeros((batch,))), "vary")
        if one_chunk:
            ids = first + jnp.arange(rows.shape[0])
            scores = _scores(query, rows)
            target_score = combine(jnp.max(jnp.where(ids[None, :] == target[:, None], scores, -jnp.inf), axis=1), "max")
            higher, higher_with_history, top, total = accumulate(start, scores, ids, jnp.ones(ids.shape, bool))
        else:
            target_score = own_score
            higher, higher_with_history, top, total = _scan_chunks(
                rows, first, lambda carry, block, ids, fresh: accumulate(carry, _scores(query, block), ids, fresh), start)
        overall_top = combine(top, "max")
        total = combine(_rescaled(total, top, overall_top), "sum")
        return (combine(higher, "sum"), combine(higher_with_history, "sum"),
                overall_top + jnp.log(total) - target_score / temperature)

    higher, higher_with_history, loss = _on_shards(per_shard, table, query, target, history, own_score)
    return 1 + higher, 1 + higher_with_history, loss


def top_items(query: jax.Array, table: jax.Array, history: jax.Array, num_items: int, k: int
              ) -> tuple[jax.Array, jax.Array]:
    """(scores (B, k), ids (B, k)): the k items of highest cosine score with the query among items
    1..num_items not in the row's history (B, L), best first; ties go to the lower id. A row with
    fewer than k such items ends with score -inf."""
    query = query.astype(jnp.float32)

    def per_shard(rows, first, query, history, combine):
        def merge(carry, block, ids, fresh):
            best_scores, best_ids = carry
            scores = jnp.where(_real(ids, fresh, num_items)[None, :] & ~_history_mask(history, ids),
                               _scores(query, block), -jnp.inf)
            both = jnp.concatenate([best_scores, scores], axis=1)  # earlier (lower) ids first: ties keep them
            both_ids = jnp.concatenate([best_ids, jnp.broadcast_to(ids, scores.shape)], axis=1)
            scores, picked = jax.lax.top_k(both, k)
            return scores, jnp.take_along_axis(both_ids, picked, axis=1)

        batch = query.shape[0]
        start = combine((jnp.full((batch, k), -jnp.inf), jnp.zeros((batch, k), jnp.int32)), "vary")
        scores, ids = _scan_chunks(rows, first, merge, start)
        scores, ids = combine(scores, "concat"), combine(ids, "concat")
        scores, picked = jax.lax.top_k(scores, k)
        return scores, jnp.take_along_axis(ids, picked, axis=1)

    return _on_shards(per_shard, table, query, history)
