"""Sparse updates of catalogue tables (train.table_optimizer) and the step-shared negatives
(train.negative_sampler): the same numbers on every mesh and micro-batching, the table split by
rows over 8 devices; lazy Adam and row-wise Adagrad against a NumPy reference driven by dense
gradients; untouched rows never written."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models.core import tables
from models.core.family import STEP_INPUTS
from models.core.losses import in_batch_log_q, in_batch_negatives, sampled_softmax_loss
from scaling.config import ConfigError, MeshConfig, TrainConfig
from scaling.engine import table_optimizers
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import make_mesh
from scaling.engine.step_functions import with_row_ids
from tests.test_sharding import NUM_ITEMS, _config, host_batches  # noqa: F401

STEP_KEY = jax.random.key(4)


def trainer_for(spec: str = "data=1", grad_accum: int = 1, **train):
    config = _config("hstu")
    config = dataclasses.replace(config, mesh=MeshConfig(spec),
                                 train=dataclasses.replace(config.train, grad_accum=grad_accum, **train))
    devices = jax.devices()[:1] if spec == "data=1" else jax.devices()
    return build_trainer(config, NUM_ITEMS, make_mesh(spec, devices), total_steps=3)


def run(trainer, batches):
    """(per step (loss, gradient norm), final state on the host)."""
    with trainer.context():
        state, losses = trainer.init(jax.random.key(1)), []
        for batch in batches:
            state, metrics = trainer.train_step(state, trainer.train_batch(batch), STEP_KEY)
            losses.append((float(metrics["loss_sum"] / metrics["positions"]), float(metrics["grad_norm"])))
    return losses, jax.device_get(state)


@pytest.mark.parametrize("train", [dict(table_optimizer="lazy_adam"),
                                   dict(table_optimizer="rowwise_adagrad", negative_sampler="shared"),
                                   dict(table_optimizer="lazy_adam", negative_sampler="in_batch")])
@pytest.mark.slow(9)
def test_sparse_steps_are_the_same_on_every_mesh_and_micro_batching(train, host_batches, monkeypatch) -> None:
    reference, reference_state = run(trainer_for(**train), host_batches)
    monkeypatch.setattr(tables, "ROW_SHARDING_MIN_ROWS", 16)  # 64 rows: padded to 3072, split over 8 devices
    trainer = trainer_for("data=2,fsdp=2,tensor=2", 2, **train)  # split by rows over all 8, 2 micro-batches
    assert str(trainer.shardings["params"]["item_embedding"].spec) == "P(('data', 'fsdp', 'tensor'), None)"
    losses, state = run(trainer, host_batches)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    table = state["params"]["item_embedding"]
    np.testing.assert_allclose(table[: NUM_ITEMS + 1], reference_state["params"]["item_embedding"], atol=1e-6)
    assert not table[NUM_ITEMS + 1:].any()  # padding rows are never written


def numpy_reference(kind: str, batches, **train):
    """Dense gradients of the table from the dense-Adam trainer's own gradient function, the
    touched rows from the model, then the table optimizer by hand and optax AdamW on the rest.
    Returns (table, other parameters, per step the rows touched)."""
    dense, sparse = trainer_for(**train), trainer_for(table_optimizer=kind, **train)
    cfg = sparse.config.train
    gradients = jax.jit(dense.functions.gradients)
    touched_rows = jax.jit(lambda b, r: sparse.functions.model.touched_rows(
        {**b, STEP_INPUTS: sparse.functions.model.step_inputs(b, r)}, r))
    with dense.context():
        params = jax.device_get(dense.init(jax.random.key(1))["params"])
    table = np.asarray(params.pop("item_embedding"), np.float64)
    moments = [np.zeros_like(table), np.zeros_like(table)] if kind == "lazy_adam" else [np.zeros(len(table))]
    adamw = optax.adamw(cfg.learning_rate, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    adamw_state = adamw.init(params)
    touched = []
    for step, batch in enumerate(batches):
        rng = jax.random.fold_in(STEP_KEY, step)
        with dense.context():
            device_batch = dense.train_batch(batch)
            grads = jax.device_get(gradients({**params, "item_embedding": jnp.asarray(table, jnp.float32)},
                                             device_batch, rng)[0])
            rows = np.unique(np.asarray(touched_rows(with_row_ids(device_batch), rng)["item_embedding"]))
        full = np.asarray(grads.pop("item_embedding"), np.float64)
        assert not np.delete(full, rows, axis=0).any()  # the loss reads no other row
        g = full[rows]
        touched.append(rows)
        if kind == "lazy_adam":
            mu, nu = moments
            mu[rows] = cfg.beta1 * mu[rows] + (1 - cfg.beta1) * g
            nu[rows] = cfg.beta2 * nu[rows] + (1 - cfg.beta2) * g * g
            mu_hat, nu_hat = mu[rows] / (1 - cfg.beta1 ** (step + 1)), nu[rows] / (1 - cfg.beta2 ** (step + 1))
            table[rows] -= cfg.learning_rate * mu_hat / (np.sqrt(nu_hat) + cfg.eps)
        else:
            (acc,) = moments
            acc[rows] += np.mean(g * g, axis=1)
            table[rows] -= cfg.learning_rate * g / (np.sqrt(acc[rows])[:, None] + cfg.eps)
        updates, adamw_state = adamw.update(grads, adamw_state, params)
        params = jax.device_get(optax.apply_updates(params, updates))
    return table, params, touched


@pytest.mark.slow(5)
@pytest.mark.parametrize("kind", ["lazy_adam", "rowwise_adagrad"])
def test_table_optimizers_equal_a_numpy_reference(kind, host_batches) -> None:
    """Three steps (batches 0, 1, 0; 4 shared negatives): rows touched at one step and not at the
    next keep their values and moments there, as the reference's do."""
    batches, train = [host_batches[0], host_batches[1], host_batches[0]], dict(negative_sampler="shared", negatives=4)
    table, params, touched = numpy_reference(kind, batches, **train)
    assert len(np.setdiff1d(touched[0], touched[1])) > 0  # rows a lazy update leaves alone at step 2
    _, state = run(trainer_for(table_optimizer=kind, **train), batches)
    np.testing.assert_allclose(state["params"]["item_embedding"], table, rtol=2e-4, atol=2e-6)
    for name, value in params.items():
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), state["params"][name], value)
    never = np.setdiff1d(np.arange(NUM_ITEMS + 1), np.concatenate(touched))
    assert len(never) > 0
    with trainer_for().context():
        initial = jax.device_get(trainer_for().init(jax.random.key(1))["params"]["item_embedding"])
    np.testing.assert_array_equal(state["params"]["item_embedding"][never], initial[never])
    moment = np.asarray(state["opt_state"]["tables"]["mu" if kind == "lazy_adam" else "accumulator"]["item_embedding"])
    assert not moment[never].any() and moment[touched[0][1:]].any()


@pytest.mark.slow
def test_in_batch_negatives_and_their_log_q() -> None:
    targets = jnp.asarray([[3, 3, 5, 0], [3, 7, 0, 0]], jnp.int32)  # 5 supervised: item 3 three times
    drawn = in_batch_negatives(jax.random.key(0), targets, 400)
    counts = {item: int(np.sum(np.asarray(drawn["negatives"]) == item)) for item in (3, 5, 7)}
    assert sum(counts.values()) == 400 and counts[3] > counts[5] + counts[7]  # ~ 240 : 80 : 80
    log_q = np.asarray(in_batch_log_q(drawn, jnp.asarray([3, 5, 7]), 400))
    np.testing.assert_allclose(np.exp(log_q), [400 * 3 / 5, 400 / 5, 400 / 5], rtol=1e-6)
    # the corrected loss: logits minus log Q, against the formula by hand
    outputs = jnp.asarray(np.eye(4)[None, :2], jnp.float32)  # (1, 2, 4)
    table = jnp.asarray(np.eye(4)[[0, 1, 2, 3]] + 0.5, jnp.float32)
    negatives, tq, nq = jnp.asarray([1, 2, 3]), jnp.asarray([[0.3, 0.1]]), jnp.asarray([0.2, 0.4, 0.6])
    loss, count = sampled_softmax_loss(outputs, jnp.asarray([[1, 2]]), table, negatives, 0.5, negative_log_q=nq,
                                       target_log_q=tq)
    unit = np.asarray(table) / np.linalg.norm(np.asarray(table), axis=1, keepdims=True)
    expected = 0.0
    for position, target in enumerate([1, 2]):
        scores = np.asarray(outputs)[0, position] @ unit.T / 0.5
        positive = scores[target] - float(tq[0, position])
        sampled = [-5e4 if n == target else scores[n] - float(nq[i]) for i, n in enumerate([1, 2, 3])]  # accidental hit
        logits = np.array([positive, *sampled])
        expected += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - positive
    assert int(count) == 2 and float(loss) == pytest.approx(expected, rel=1e-5)


def test_sparse_updates_need_a_sampled_loss() -> None:
    with pytest.raises(ConfigError, match="train.table_optimizer='lazy_adam' needs train.loss='sampled_softmax'"):
        TrainConfig(loss="full_softmax", table_optimizer="lazy_adam")
    with pytest.raises(ConfigError, match="train.negative_sampler='in_batch' needs"):
        TrainConfig(loss="full_softmax", negative_sampler="in_batch")


def test_a_family_without_a_catalogue_table_refuses_sparse_updates() -> None:
    config = _config("encdec")  # its token vocabulary does not grow with the catalogue
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, table_optimizer="lazy_adam"))
    with pytest.raises(ConfigError, match="train.table_optimizer='lazy_adam': model.family='encdec' has no catalogue "
                                          "table to update sparsely"):
        build_trainer(config, NUM_ITEMS, make_mesh("data=1", jax.devices()[:1]), total_steps=1)


@pytest.mark.slow
def test_touched_rows_are_found_without_a_scan_as_long_as_the_ids(host_batches, monkeypatch) -> None:
    """XLA splits a sort's cumulative sum over the mesh as a reduce-window as long as its input
    (quadratic in the touched rows: minutes per step at a million items); the ids are deduplicated
    whole on every device instead."""
    monkeypatch.setattr(tables, "ROW_SHARDING_MIN_ROWS", 16)
    trainer = trainer_for("data=8", table_optimizer="lazy_adam")
    with trainer.context():
        text = trainer.train_step.lower(trainer.abstract_state, trainer.train_batch(host_batches[0]),
                                        STEP_KEY).compile().as_text()
    sliding = [int(np.prod([int(n) for n in size.split("x")]))  # strided windows are tiled reductions: linear
               for size, rest in re.findall(r"reduce-window\(.*?window=\{size=([0-9x]+)([^}]*)\}", text)
               if "stride" not in rest]
    assert sliding and max(sliding) <= 64, sorted(sliding)[-5:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lazy_adam", "rowwise_adagrad"])
def test_the_whole_table_form_updates_exactly_as_the_sorted_form(kind) -> None:
    """A step that looks up more rows than the table has gets the whole table, its touched rows
    marked; the update equals the sorted subset's, and rows not looked up stay as they were."""
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(40, 4)), jnp.float32)
    lookups = jnp.asarray(rng.choice(np.arange(0, 40, 3), size=30), jnp.int32)  # rows 0, 3, ..., 39
    weights = jnp.asarray(rng.normal(size=(30, 4)), jnp.float32)
    train = TrainConfig(weight_decay=0.01)
    state = {key: value + 0.5 for key, value in table_optimizers.init(kind, table).items()}
    results = []
    for ids in (lookups, jnp.concatenate([lookups, lookups[:15]])):  # 30 < 40 rows: sorted; 45: whole
        subset = tables.gather_rows(table, ids)
        assert (subset.touched is None) == (ids.size < 40)
        loss = lambda rows: jnp.sum(tables.take_rows(dataclasses.replace(subset, rows=rows), lookups) * weights)
        results.append(table_optimizers.update(kind, train, lambda s: 0.1, jnp.int32(2), table, state, subset,
                                               jax.grad(loss)(subset.rows)))
    (sorted_table, sorted_state), (whole_table, whole_state) = results
    np.testing.assert_allclose(whole_table, sorted_table, rtol=1e-6, atol=1e-7)
    for key in state:
        np.testing.assert_allclose(whole_state[key], sorted_state[key], rtol=1e-6, atol=1e-7)
    untouched = np.setdiff1d(np.arange(40), np.asarray(lookups))
    np.testing.assert_array_equal(np.asarray(whole_table)[untouched], np.asarray(table)[untouched])
    assert not np.allclose(np.asarray(whole_table)[np.asarray(lookups)], np.asarray(table)[np.asarray(lookups)])
