"""The Flax models and losses against tests/numpy_reference.py (a per-user NumPy version of the
spec), for padded rows (one user per row) and packed rows (several users per row): every user's
outputs must equal the reference run on that user alone."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.decoder_only.decoder import MODEL_INPUTS, build_model
from tests import numpy_reference as ref
from tests.model_paths import gradient_atol, model_config, tolerance

ITEMS = 12
ROW = 14  # tokens per row; deliberately != max_positions, so the divisor N is not the row length
CONFIG = dict(d_model=8, blocks=2, heads=2, dqk=4, dv=4, max_positions=16, ffn_dim=12,
              dropout=0.3, input_dropout=0.3)  # dropout must be off under deterministic=True
LENGTHS = (5, 7, 3, 9, 4, 6, 14)
PACKING = ((0, 1), (2, 4, 5), (3,), (6,))  # user indices per packed row: 12, 13, 9, 14 tokens
GAPS = np.array([0, 0, 1, 2, 3, 7, 20, 150, 4000, 90_000, 2_000_000, 60_000_000, 600_000_000])
TOL = tolerance(1e-5)
TEMPERATURE = 0.05


def make_users(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Histories with ties and gaps from 0 s to years (many time buckets). Even users look like
    eval rows (the last token has a target and its time), odd ones like training rows (the last
    token has no target and its own time as next timestamp)."""
    rng = np.random.default_rng(seed)
    users = []
    for index, n in enumerate(LENGTHS):
        items = rng.integers(1, ITEMS + 1, n + 1)
        times = 100_000_000 + np.cumsum(rng.choice(GAPS, n + 1))  # fits int32 (jax without x64)
        last_has_target = index % 2 == 0
        users.append(dict(
            items=items[:n],
            timestamps=times[:n],
            next_timestamps=np.append(times[1:n], times[n] if last_has_target else times[n - 1]),
            targets=np.append(items[1:n], items[n] if last_has_target else 0),
        ))
    return users


def make_batch(users: list[dict], rows: list[tuple[int, ...]], num_rows: int) -> tuple[dict, list]:
    """(batch of num_rows x ROW, [(user, row, start)]); rows beyond len(rows) are all padding."""
    batch = {key: np.zeros((num_rows, ROW), np.int64 if "timestamps" in key else np.int32)
             for key in ("items", "timestamps", "next_timestamps", "targets", "segment_ids", "positions")}
    where = []
    for r, members in enumerate(rows):
        at = 0
        for segment, u in enumerate(members, start=1):
            user = users[u]
            n = len(user["items"])
            span = slice(at, at + n)
            for key in ("items", "timestamps", "next_timestamps", "targets"):
                batch[key][r, span] = user[key]
            batch["segment_ids"][r, span] = segment
            batch["positions"][r, span] = np.arange(n)
            where.append((u, r, at))
            at += n
        assert at <= ROW
    return batch, where


def model_inputs(batch: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int64 timestamps become int32 without jax x64
        return {key: jnp.asarray(batch[key]) for key in MODEL_INPUTS}


@pytest.fixture(scope="module", params=["hstu", "sasrec"])
def family(request):
    """Everything a test needs for one family, computed once: one compile, one batch shape."""
    cfg = model_config(family=request.param, **CONFIG)
    model = build_model(cfg, ITEMS)
    users = make_users()
    padded, padded_where = make_batch(users, [(u,) for u in range(len(users))], len(users))
    packed, packed_where = make_batch(users, list(PACKING), len(users))  # same shape, 3 empty rows
    variables = model.init(jax.random.key(1), model_inputs(padded))
    apply = jax.jit(lambda v, b: model.apply(v, b, deterministic=True))
    params = ref.numpy_params(variables["params"])
    expected = [ref.forward_user(params, cfg, u["items"], u["timestamps"], u["next_timestamps"]) for u in users]
    return dict(
        cfg=cfg, users=users, params=params, expected=expected,
        padded=(padded, padded_where, np.asarray(apply(variables, model_inputs(padded)))),
        packed=(packed, packed_where, np.asarray(apply(variables, model_inputs(packed)))),
    )


def test_data_covers_ties_and_many_time_buckets() -> None:
    buckets = set()
    for user in make_users():
        n = len(user["items"])
        buckets |= {ref.time_bucket(user["next_timestamps"][i] - user["timestamps"][j]) for i in range(n) for j in range(i + 1)}
    assert 0 in buckets and len(buckets) >= 12, sorted(buckets)


@pytest.mark.slow
def test_parameters_have_the_spec_shapes(family) -> None:
    cfg, params = family["cfg"], family["params"]
    assert params["item_embedding"].shape == (ITEMS + 1, 8) and params["position_embedding"].shape == (16, 8)
    assert sorted(k for k in params if k.startswith("block_")) == ["block_0", "block_1"]
    if cfg.family == "hstu":
        assert params["block_0"]["uvqk"].shape == (8, 2 * 2 * 4 + 2 * 2 * 4)
        assert params["block_0"]["rel_pos_bias"].shape == (2 * 16 - 1,)
        assert params["block_0"]["rel_time_bias"].shape == (129,)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_every_user_equals_the_reference_alone(family, layout) -> None:
    batch, where, out = family[layout]
    assert np.all(np.isfinite(out))
    for u, r, start in where:
        expected = family["expected"][u]
        got = out[r, start:start + len(expected)]
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0,
                                   err_msg=f"{family['cfg'].family} {layout}: user {u} (row {r}, from {start})")
    np.testing.assert_array_equal(out[batch["segment_ids"] == 0], 0.0)  # padding outputs are zero


def test_outputs_are_unit_vectors(family) -> None:
    _, where, out = family["packed"]
    for u, r, start in where:
        norms = np.linalg.norm(out[r, start:start + len(family["users"][u]["items"])], axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_time_buckets_match_the_spec() -> None:
    from models.core.attention import time_buckets

    deltas = np.array([-1e17, -5e16, -100, -2, -1, 0, 0.5, 1, 2, 3, 5, 10, 1000, 86_400, 3e7, 1e12, 1e16, 5e16,
                       1e17, 1e30], np.float32)
    got = np.asarray(time_buckets(jnp.asarray(deltas)[None], jnp.zeros((1, 1), jnp.float32), 128))[0, :, 0]
    expected = [ref.time_bucket(float(d), 128) for d in deltas]
    assert expected[0] == 128 and expected[5] == 0 and expected[-1] == 128
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------- losses

def _losses():
    losses = pytest.importorskip("models.core.losses")
    for name in ("sampled_softmax_loss", "full_softmax_loss"):
        if not hasattr(losses, name):
            pytest.skip(f"models.core.losses.{name} does not exist yet")
    return losses


def _negatives(targets: np.ndarray, count: int = 6, seed: int = 2) -> np.ndarray:
    """Uniform draws from 1..ITEMS, with accidental hits planted at every third position."""
    rng = np.random.default_rng(seed)
    negatives = rng.integers(1, ITEMS + 1, (*targets.shape, count)).astype(np.int32)
    flat = negatives.reshape(-1, count)
    flat[::3, 1] = targets.reshape(-1)[::3]
    return negatives


@pytest.mark.slow
@pytest.mark.parametrize("score_all_items", [True, False])
def test_sampled_softmax_loss_equals_the_reference(family, score_all_items) -> None:
    losses = _losses()
    batch, _, out = family["packed"]
    targets = batch["targets"]
    negatives = _negatives(targets)
    hits = (negatives == targets[..., None]) & (targets[..., None] > 0)
    assert hits.sum() >= 5  # the accidental-hit masking is exercised
    expected, count = ref.sampled_softmax_loss(out, targets, family["params"]["item_embedding"], negatives, TEMPERATURE)
    total, positions = losses.sampled_softmax_loss(jnp.asarray(out), jnp.asarray(targets), jnp.asarray(family["params"]["item_embedding"]),
                                                   jnp.asarray(negatives), TEMPERATURE, score_all_items=score_all_items)
    assert int(positions) == count == int((targets > 0).sum())
    assert float(total) / float(positions) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_full_softmax_loss_equals_the_reference(family) -> None:
    losses = _losses()
    batch, _, out = family["packed"]
    targets = batch["targets"]
    expected, count = ref.full_softmax_loss(out, targets, family["params"]["item_embedding"], TEMPERATURE)
    total, positions = losses.full_softmax_loss(jnp.asarray(out), jnp.asarray(targets),
                                                jnp.asarray(family["params"]["item_embedding"]), TEMPERATURE)
    assert int(positions) == count == int((targets > 0).sum())
    assert float(total) / float(positions) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_sasrec_gelu_equals_the_reference() -> None:
    cfg = model_config(family="sasrec", ffn_activation="gelu", **CONFIG)
    model = build_model(cfg, ITEMS)
    users = make_users()
    packed, where = make_batch(users, list(PACKING), len(users))
    variables = model.init(jax.random.key(1), model_inputs(packed))
    out = np.asarray(model.apply(variables, model_inputs(packed), deterministic=True))
    params = ref.numpy_params(variables["params"])
    for u, r, start in where:
        expected = ref.sasrec_user(params, cfg, users[u]["items"])
        np.testing.assert_allclose(out[r, start:start + len(expected)], expected, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- gradients

def _reference_mean_loss(params: dict, cfg, users: list[dict], negatives_per_user: list[np.ndarray]) -> float:
    """The NumPy reference's training loss: sampled softmax averaged over every supervised position."""
    total, count = 0.0, 0
    for user, negatives in zip(users, negatives_per_user):
        out = ref.forward_user(params, cfg, user["items"], user["timestamps"], user["next_timestamps"])
        mean, n = ref.sampled_softmax_loss(out, user["targets"], params["item_embedding"], negatives, TEMPERATURE)
        total, count = total + mean * n, count + n
    return total / count


def _with_leaf(params: dict, path: tuple[str, ...], value: np.ndarray) -> dict:
    if len(path) == 1:
        return {**params, path[0]: value}
    return {**params, path[0]: _with_leaf(params[path[0]], path[1:], value)}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_training_gradients_equal_finite_differences_of_the_reference(family, layout) -> None:
    """jax.grad of the model + sampled-softmax loss (through the hand-written backward passes of
    models/core/layers.py and models/decoder_only/hstu.py) against central differences of the float64 NumPy
    reference, one random direction per parameter array."""
    losses = _losses()
    cfg, users, params = family["cfg"], family["users"], family["params"]
    batch, where, _ = family[layout]
    negatives = _negatives(batch["targets"], seed=5)
    negatives_per_user = [negatives[r, start:start + len(users[u]["items"])] for u, r, start in where]
    users_in_order = [users[u] for u, _, _ in where]
    model = build_model(cfg, ITEMS)
    inputs = model_inputs(batch)

    def mean_loss(p, score_all_items):
        out = model.apply({"params": p}, inputs, deterministic=True)
        total, positions = losses.sampled_softmax_loss(out, jnp.asarray(batch["targets"]), p["item_embedding"],
                                                       jnp.asarray(negatives), TEMPERATURE, score_all_items=score_all_items)
        return total / positions

    jax_params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    grads = {all_items: jax.tree.map(np.asarray, jax.jit(jax.grad(mean_loss), static_argnums=1)(jax_params, all_items))
             for all_items in (True, False)}
    rng = np.random.default_rng(7)
    eps = 1e-5
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for key_path, leaf in leaves:
        path = tuple(k.key for k in key_path)
        direction = rng.standard_normal(leaf.shape)
        plus = _reference_mean_loss(_with_leaf(params, path, leaf + eps * direction), cfg, users_in_order, negatives_per_user)
        minus = _reference_mean_loss(_with_leaf(params, path, leaf - eps * direction), cfg, users_in_order, negatives_per_user)
        expected = (plus - minus) / (2 * eps)
        for all_items, tree in grads.items():
            gradient = _leaf(tree, path)
            got = float(np.sum(np.asarray(gradient, np.float64) * direction))
            assert got == pytest.approx(expected, rel=2e-3, abs=gradient_atol(2e-4, gradient)), \
                (cfg.family, layout, path, all_items)


def _leaf(tree: dict, path: tuple[str, ...]) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return tree
