"""The mixture-of-experts feed-forward: one expert is the dense feed-forward, capacity drops
exactly what it reports, the balance loss is Switch's formula, and the encoder-decoder with one
expert trains exactly as the dense one."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.core import family as families
from models.core.config import ModelConfig
from models.encdec.layers import FeedForward
from models.encdec.model import EncDecModel, vocabulary_codes
from models.encdec.moe import MoEFeedForward, capacity, route
from models.encdec.network import EncDecNetwork
from tests.model_paths import model_config

D, F, GROUPS, TOKENS = 8, 16, 2, 6


def _tokens(seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (GROUPS, TOKENS, D))


@pytest.mark.slow
def test_one_expert_with_top_1_is_the_dense_feed_forward_exactly() -> None:
    x = _tokens()
    dense = FeedForward(F, "relu")
    dense_params = jax.jit(dense.init)(jax.random.key(1), x)["params"]
    moe = MoEFeedForward(F, "relu", experts=1, top_k=1, capacity_factor=1.0)
    params = nn.meta.unbox(jax.jit(lambda key: moe.init(key, x, jnp.ones(x.shape[:2], bool), False))(jax.random.key(2))["params"])
    params = {**params, "wi": nn.meta.unbox(dense_params["wi"])[None], "wo": nn.meta.unbox(dense_params["wo"])[None]}
    expected = jax.jit(dense.apply)({"params": dense_params}, x)
    for deterministic in (True, False):  # capacity = every token either way
        got = jax.jit(moe.apply, static_argnums=3)({"params": params}, x, jnp.ones(x.shape[:2], bool), deterministic)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.slow
def test_capacity_overflow_drops_exactly_the_tokens_it_reports() -> None:
    experts, slots = 3, 2
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(GROUPS, TOKENS, experts)).astype(np.float32)
    logits[0, :, 0] += 10.0  # group 0: every token's first choice is expert 0
    real = np.ones((GROUPS, TOKENS), bool)
    real[1, 4:] = False  # two padding tokens: never routed, never counted
    for top_k in (1, 2):
        dispatch, combine, stats = (np.asarray(a) if not isinstance(a, dict) else a
                                    for a in jax.jit(route, static_argnums=(2, 3))(logits, real, top_k, slots))
        # the reference: assignments in order (choice, token), each expert keeps its first `slots`
        order = np.argsort(-jax.nn.softmax(logits, axis=-1), axis=-1, kind="stable")[..., :top_k]
        kept_total = assigned_total = 0
        for g in range(GROUPS):
            used = np.zeros(experts, int)
            expected = np.zeros((TOKENS, experts, slots))
            for j in range(top_k):
                for n in range(TOKENS):
                    if not real[g, n]:
                        continue
                    e = order[g, n, j]
                    assigned_total += 1
                    if used[e] < slots:
                        expected[n, e, used[e]] = 1.0
                        used[e] += 1
                        kept_total += 1
            np.testing.assert_array_equal(dispatch[g], expected)
            assert ((combine[g] > 0) == (expected > 0)).all()
        assert float(stats["dropped"]) == pytest.approx(1.0 - kept_total / assigned_total)
        assert float(stats["dropped"]) > 0.3  # group 0 overflows expert 0
        assert (dispatch[1, 4:] == 0).all()


@pytest.mark.slow
def test_dropped_tokens_get_no_feed_forward_output() -> None:
    x = _tokens(3)
    moe = MoEFeedForward(F, "relu", experts=2, top_k=1, capacity_factor=0.5)  # C = 2 of 6 tokens x 1 / 2
    real = jnp.ones(x.shape[:2], bool)
    params = nn.meta.unbox(jax.jit(lambda key: moe.init(key, x, real, False))(jax.random.key(0))["params"])
    params["router"] = jnp.zeros_like(params["router"])  # uniform: ties go to expert 0
    out, state = jax.jit(lambda p: moe.apply({"params": p}, x, real, False, mutable=["intermediates"]))(params)
    stats = state["intermediates"]["moe"][0]
    assert capacity(TOKENS, 2, 1, 0.5) == 2
    zero_rows = np.all(np.asarray(out) == 0, axis=-1)
    assert zero_rows.sum() == GROUPS * (TOKENS - 2)  # all tokens chose expert 0, which takes 2 per group
    assert float(stats["dropped"]) == pytest.approx((TOKENS - 2) / TOKENS)


@pytest.mark.slow
def test_balance_loss_is_the_switch_formula() -> None:
    experts = 4
    logits = np.random.default_rng(1).normal(size=(GROUPS, TOKENS, experts)).astype(np.float32)
    real = np.ones((GROUPS, TOKENS), bool)
    real[0, -1] = False
    for top_k in (1, 2):
        _, _, stats = jax.jit(route, static_argnums=(2, 3))(logits, real, top_k, TOKENS)
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
        chosen = np.argsort(-probs, axis=-1, kind="stable")[..., :top_k]
        losses, entropies, weights = [], [], []
        for g in range(GROUPS):
            r = real[g]
            f = np.array([np.sum(chosen[g][r] == e) for e in range(experts)]) / (r.sum() * top_k)
            p = probs[g][r].mean(axis=0)
            losses.append(experts * np.sum(f * p))
            weights.append(r.sum())
            entropies += list(-np.sum(probs[g][r] * np.log(probs[g][r]), axis=-1))
        assert float(stats["balance"]) == pytest.approx(np.average(losses, weights=weights), rel=1e-6)
        assert float(stats["entropy"]) == pytest.approx(np.mean(entropies), rel=1e-6)
        np.testing.assert_allclose(np.asarray(stats["load"]).sum(), 1.0, rtol=1e-6)
    uniform = route(jnp.zeros((1, 8, experts)), jnp.ones((1, 8), bool), 1, 8)[2]
    assert float(uniform["balance"]) == pytest.approx(1.0)  # all to expert 0 (ties): E x 1 x 1/E


def _encdec(experts: int):
    base = dict(family="encdec", d_model=8, heads=2, d_ff=16, encoder_blocks=1, decoder_blocks=2, dropout=0.0,
                history_items=3, user_buckets=5, ids_levels=2, ids_codebook=4, relative_buckets=8,
                relative_max_distance=16, targets_per_row=3)
    config = model_config(**base, **({"experts": 1, "top_k": 1, "capacity_factor": 1.0} if experts else {}))
    codes = np.array([(a, b, 0) for a in range(4) for b in range(3)])
    return EncDecModel(EncDecNetwork(config), config, len(codes), vocabulary_codes(codes, config), {})


@pytest.mark.slow
def test_encdec_with_one_expert_trains_as_the_dense_one() -> None:
    from tests.test_encdec import tiny_batch

    dense, moe = _encdec(0), _encdec(1)
    dense_params = nn.meta.unbox(jax.jit(dense.init)(jax.random.key(0), {}))
    moe_params = nn.meta.unbox(jax.jit(moe.init)(jax.random.key(0), {}))
    for name, block in moe_params.items():
        if name.startswith("decoder_") and name[-1].isdigit():
            block["ffn"] = {"router": block["ffn"]["router"], "wi": dense_params[name]["ffn"]["wi"][None],
                            "wo": dense_params[name]["ffn"]["wo"][None]}
        else:
            moe_params[name] = dense_params[name]
    batch = {k: jnp.asarray(v) for k, v in tiny_batch(dense.config).items() if k != "users"}
    batch["targets"] = jnp.where(batch["targets"] > 12, 1, batch["targets"])
    batch["items"] = jnp.where(batch["items"] > 12, 1, batch["items"])
    key = jax.random.key(5)
    dense_sum, dense_count, _ = jax.jit(dense.loss_sums)(dense_params, batch, key)
    moe_sum, moe_count, aux = jax.jit(moe.loss_sums)(moe_params, batch, key)
    assert float(moe_sum) == pytest.approx(float(dense_sum), rel=1e-6) and float(moe_count) == float(dense_count)
    assert float(aux["metrics"]["moe_dropped"]) == 0.0 and float(aux["metrics"]["moe_balance"]) == pytest.approx(1.0)
    assert float(aux["losses"]["moe_balance_loss"]) == pytest.approx(0.01)


def test_accounting_counts_the_router_and_the_active_experts() -> None:
    dense = ModelConfig(family="encdec", d_model=64, heads=4, d_ff=256)
    moe = ModelConfig(family="encdec", d_model=64, heads=4, d_ff=256, experts=8, top_k=2, expert_d_ff=128)
    family = families.of(dense)
    d_counts, m_counts = family.param_counts(dense, 1682), family.param_counts(moe, 1682)
    per_expert = 2 * 64 * 128
    assert m_counts["params"] - d_counts["params"] == 2 * (8 * per_expert + 64 * 8 - 2 * 64 * 256)
    assert m_counts["params"] - m_counts["params_active"] == 2 * 6 * per_expert
    assert d_counts["params_active"] == d_counts["params"]
    counts = family.full_row_counts(dense, 4, 8)
    extra = family.model_flops(moe, None, counts, 1682) - family.model_flops(dense, None, counts, 1682)
    # the same active feed-forward (2 x 128 = 256 hidden units per token) plus the router's 2 d E
    assert extra == pytest.approx(3 * 2 * counts["examples"] * moe.id_length * 2 * 64 * 8)


def test_param_counts_equal_the_built_parameters() -> None:
    config = ModelConfig(family="encdec", d_model=16, heads=2, d_ff=32, experts=3, top_k=2, expert_d_ff=24,
                         decoder_blocks=2, user_buckets=7, ids_codebook=4)
    family = families.of(config)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(family.build(config, None, 30).init(jax.random.key(0), {})))
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes)) == family.param_counts(config, 30)["params"]
