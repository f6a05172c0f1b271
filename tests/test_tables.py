"""Catalogue tables (models/core/tables.py): padded and split by rows over every device when large;
ranks, eval loss and top items computed in chunks per shard equal the plain (B x catalogue)
computation; training on the padded, row-split table gives the single-device numbers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from models.core import tables
from models.core.layers import l2_normalize
from scaling.config import MeshConfig
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import logical_to_spec, make_mesh
from tests.test_sharding import NUM_ITEMS, _config, host_batches, per_step  # noqa: F401

ITEMS, DIM, BATCH, HISTORY = 200, 8, 16, 12


def dense_reference(query, table, target, history, num_items, temperature):
    """The plain computation: one (B x rows) score matrix and a (B x rows) exclusion mask."""
    candidates = table / np.sqrt(np.maximum(np.sum(table**2, axis=1, keepdims=True), 1e-12))
    scores = query @ candidates.T
    rows = np.arange(scores.shape[1])
    target_score = np.take_along_axis(scores, target[:, None], axis=1)[:, 0]
    excluded = np.zeros(scores.shape, bool)
    for b in range(len(target)):
        excluded[b, history[b][history[b] != target[b]]] = True
    excluded |= (rows == 0) | (rows > num_items)
    rank = 1 + np.sum((scores > target_score[:, None]) & ~excluded, axis=1)
    logits = np.where((rows == 0) | (rows > num_items), -np.inf, scores / temperature)
    loss = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), axis=1)) + logits.max(1) - target_score / temperature
    hidden = np.where(excluded | np.isin(rows[None, :], [0]), -np.inf, scores)
    for b in range(len(target)):
        hidden[b, history[b]] = -np.inf
    order = np.argsort(-hidden, axis=1, kind="stable")[:, :10]
    return rank, loss, order


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    padded = 256  # 200 items + the padding row, padded to 256 stored rows
    table = np.zeros((padded, DIM), np.float32)
    table[: ITEMS + 1] = rng.normal(size=(ITEMS + 1, DIM))
    query = np.asarray(l2_normalize(jnp.asarray(rng.normal(size=(BATCH, DIM)), jnp.float32)))
    target = rng.integers(1, ITEMS + 1, BATCH).astype(np.int32)
    history = rng.integers(0, ITEMS + 1, (BATCH, HISTORY)).astype(np.int32)
    history[::3, 0] = target[::3]  # the target in its own history is still ranked
    history[1, :] = target[1]
    return query, table, target, history


def _run(case, mesh=None):
    query, table, target, history = case

    def ranks_and_top(query, table, target, history):
        rank, rank_with_history, loss = tables.target_ranks(query, table, target, history, ITEMS, 0.05)
        scores, items = tables.top_items(query, table, history, ITEMS, 10)
        return rank, rank_with_history, loss, items, scores

    args = tuple(jnp.asarray(x) for x in case)
    if mesh is None:
        return jax.device_get(jax.jit(ranks_and_top)(*args))
    split = tables.row_axes(table.shape[0], mesh)
    assert split == tuple(name for name in mesh.axis_names if mesh.shape[name] > 1)
    shardings = (NamedSharding(mesh, PartitionSpec(("data", "fsdp"))), NamedSharding(mesh, PartitionSpec(split, None)),
                 NamedSharding(mesh, PartitionSpec(("data", "fsdp"))), NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
    with jax.set_mesh(mesh):
        return jax.device_get(jax.jit(ranks_and_top, in_shardings=shardings)(*args))


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [4096, 12])  # one chunk; several (per shard too), the last one moved back
@pytest.mark.parametrize("spec", [None, "data=8", "data=2,fsdp=2,tensor=2"])
def test_chunked_ranks_loss_and_top_items_equal_the_plain_computation(case, chunk, spec, monkeypatch) -> None:
    monkeypatch.setattr(tables, "SCORE_CHUNK_ROWS", chunk)
    monkeypatch.setattr(tables, "ROW_SHARDING_MIN_ROWS", 64)
    query, table, target, history = [np.asarray(x, np.float64) if i < 2 else x for i, x in enumerate(case)]
    rank, loss, order = dense_reference(query, table, target, history, ITEMS, 0.05)
    rank_with_history, _, _ = dense_reference(query, table, target, np.zeros_like(history), ITEMS, 0.05)
    got_rank, got_rank_with_history, got_loss, items, scores = _run(case, None if spec is None else make_mesh(spec))
    np.testing.assert_array_equal(got_rank, rank)
    np.testing.assert_array_equal(got_rank_with_history, rank_with_history)
    assert (rank_with_history >= rank).all() and (rank_with_history > rank).any()  # the history items count
    np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
    np.testing.assert_array_equal(items, order)
    assert np.all(np.diff(scores, axis=1) <= 0) and np.isfinite(scores).all()


def test_padding_and_row_layout() -> None:
    assert tables.padded_rows(1683) == 1683  # small: as stored before (old checkpoints restore)
    assert tables.padded_rows(1_000_001) == 1_001_472 and 1_001_472 % tables.ROW_ALIGN == 0
    for devices in (2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512, 1024):
        assert tables.ROW_ALIGN % devices == 0
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    assert logical_to_spec(("table_rows", "embed"), (1_001_472, 64), mesh) == PartitionSpec(("data", "fsdp", "tensor"), None)
    assert logical_to_spec(("table_rows", "embed"), (1_683, 64), mesh) == PartitionSpec(None, "fsdp")  # small: the rule
    assert logical_to_spec(("table_rows", "embed"), (1_001_472, 64), make_mesh("data=8")) == PartitionSpec("data", None)
    init = tables.padded_init(jax.nn.initializers.normal(1.0), 5)
    key = jax.random.key(0)
    padded, plain = init(key, (8, 3)), jax.nn.initializers.normal(1.0)(key, (5, 3))
    np.testing.assert_array_equal(padded[:5], plain)
    assert not np.asarray(padded[5:]).any()


@pytest.mark.slow(6)
@pytest.mark.parametrize("spec", ["data=8", "data=2,fsdp=2,tensor=2"])
def test_training_on_a_padded_row_split_table_equals_the_single_device_unpadded_one(spec, host_batches, monkeypatch):
    """Per-step losses and gradient norms, with dropout and sampled negatives."""
    (reference,), _ = per_step("hstu", "data=1", 1, host_batches)
    monkeypatch.setattr(tables, "ROW_SHARDING_MIN_ROWS", 16)  # 64 rows: padded to 3072, split over every device
    (losses,), _ = per_step("hstu", spec, 1, host_batches)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    config = dataclasses.replace(_config("hstu"), mesh=MeshConfig(spec))
    trainer = build_trainer(config, NUM_ITEMS, make_mesh(spec), total_steps=1)
    table = trainer.abstract_state["params"]["item_embedding"]
    assert table.shape == (tables.ROW_ALIGN, 16)
    assert trainer.shardings["params"]["item_embedding"].spec == PartitionSpec(trainer.mesh.axis_names if spec != "data=8" else "data", None)
    assert trainer.shardings["opt_state"][0].mu["item_embedding"].spec == trainer.shardings["params"]["item_embedding"].spec
    assert trainer.param_count == sum(np.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_state["params"])) \
        - (tables.ROW_ALIGN - NUM_ITEMS - 1) * 16
