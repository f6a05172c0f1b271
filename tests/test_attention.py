"""Blockwise HSTU attention, and dense attention split into causal query blocks, equal the whole
dense square: outputs and every gradient, packed rows."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.core import attention
from models.core.config import ModelConfig
from models.core.layers import attention_mask, force_hand_written_kernels
from models.decoder_only.decoder import MODEL_INPUTS, build_model
from tests.model_paths import model_config

B, L, H, DQK, DV, P = 2, 13, 2, 4, 3, 16


def packed_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Row 0: segments of 5, 6 and 2 tokens; row 1: 9 tokens then padding. Timestamps spread
    over many log-buckets, with ties."""
    rng = np.random.default_rng(seed)
    segments = np.array([[1] * 5 + [2] * 6 + [3] * 2, [1] * 9 + [0] * 4], np.int32)
    times = np.cumsum(rng.choice([0, 1, 7, 300, 90_000, 4_000_000], size=(B, L)), axis=1).astype(np.int32)
    next_times = np.concatenate([times[:, 1:], times[:, -1:]], axis=1)
    positions = np.zeros((B, L), np.int32)
    for row in range(B):
        for seg in set(segments[row]) - {0}:
            where = np.flatnonzero(segments[row] == seg)
            positions[row, where] = np.arange(len(where))
    return {"timestamps": times * (segments > 0), "next_timestamps": next_times * (segments > 0),
            "segment_ids": segments, "positions": positions,
            "items": np.where(segments > 0, rng.integers(1, 30, (B, L)), 0).astype(np.int32)}


def random_case(inputs_seed: int, key_seed: int) -> tuple[dict, tuple, jax.Array, jax.Array, jax.Array]:
    """(packed inputs, (q, k, v, w_pos, w_time), cotangent, time buckets, mask) for one test."""
    inputs = packed_inputs(inputs_seed)
    keys = jax.random.split(jax.random.key(key_seed), 6)
    q, k = (jax.random.normal(key, (B, L, H, DQK)) for key in keys[:2])
    v = jax.random.normal(keys[2], (B, L, H, DV))
    w_pos, w_time = jax.random.normal(keys[3], (2 * P - 1,)), jax.random.normal(keys[4], (129,))
    cotangent = jax.random.normal(keys[5], (B, L, H, DV))
    buckets = attention.time_buckets(inputs["next_timestamps"], inputs["timestamps"], 128)
    mask = attention_mask(jnp.asarray(inputs["segment_ids"]))
    return inputs, (q, k, v, w_pos, w_time), cotangent, buckets, mask


def assert_same_value_and_gradients(got, got_grads, want, want_grads) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name, g, w in zip(("q", "k", "v", "w_pos", "w_time"), got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("block", [4, 5, 13, 16])
def test_blockwise_equals_dense_with_gradients(block: int) -> None:
    inputs, args, cotangent, buckets, mask = random_case(0, 0)

    def dense(*args):
        return jnp.sum(attention.dense(*args, buckets, mask, float(P)) * cotangent)

    def blockwise(*args):
        return jnp.sum(attention.blockwise(*args, inputs["timestamps"], inputs["next_timestamps"],
                                           inputs["segment_ids"], float(P), block) * cotangent)

    want, want_grads = jax.value_and_grad(dense, argnums=range(5))(*args)
    got, got_grads = jax.jit(jax.value_and_grad(blockwise, argnums=range(5)))(*args)
    assert_same_value_and_gradients(got, got_grads, want, want_grads)
    assert float(jnp.abs(want_grads[4]).sum()) > 0  # several time buckets really got gradient


def test_causal_query_blocks_cover_every_query_once() -> None:
    assert attention.causal_query_blocks(200, 2) == [(0, 100), (100, 200)]
    assert attention.causal_query_blocks(13, 1) == [(0, 13)]
    assert attention.causal_query_blocks(2, 3) == [(0, 1), (1, 2)]  # empty blocks dropped
    for length, splits in ((13, 3), (200, 7), (5, 5)):
        blocks = attention.causal_query_blocks(length, splits)
        assert [b[0] for b in blocks[1:]] == [b[1] for b in blocks[:-1]] and blocks[0][0] == 0 and blocks[-1][1] == length


@pytest.mark.slow
@pytest.mark.parametrize("splits", [2, 3, 13])
def test_dense_split_into_causal_query_blocks_equals_the_whole_square(splits: int) -> None:
    _, args, cotangent, buckets, mask = random_case(2, 3)

    def loss(splits, *args):
        return jnp.sum(attention.dense(*args, buckets, mask, float(P), splits) * cotangent)

    value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=range(1, 6)), static_argnums=0)  # one compile, not an op each
    want, want_grads = value_and_grads(1, *args)
    got, got_grads = value_and_grads(splits, *args)
    assert_same_value_and_gradients(got, got_grads, want, want_grads)


@pytest.mark.slow
def test_blockwise_model_equals_dense_model() -> None:
    config = model_config(family="hstu", d_model=12, blocks=2, heads=H, max_positions=P, dropout=0.0, input_dropout=0.0)
    inputs = {name: jnp.asarray(value) for name, value in packed_inputs(1).items() if name in MODEL_INPUTS}
    dense_model = build_model(config, 30)
    params = dense_model.init(jax.random.key(2), inputs)
    blockwise_model = build_model(dataclasses.replace(config, attention="blockwise", attention_block=8), 30)
    np.testing.assert_allclose(blockwise_model.apply(params, inputs), dense_model.apply(params, inputs), atol=2e-6)


def test_blockwise_is_hstu_only() -> None:
    with pytest.raises(ValueError, match="model.attention"):
        ModelConfig(family="sasrec", attention="blockwise")


@pytest.mark.slow
def test_silu_projection_gradient_equals_autodiff_of_the_formula() -> None:
    from models.decoder_only.hstu import silu_projection

    x = jax.random.normal(jax.random.key(3), (2, 5, 6))
    w = jax.random.normal(jax.random.key(4), (6, 7))
    cotangent = jax.random.normal(jax.random.key(5), (2, 5, 7))
    plain = lambda x, w: jnp.sum(jax.nn.silu(jnp.einsum("bld,de->ble", x, w)) * cotangent)
    custom = lambda x, w: jnp.sum(silu_projection(x, w) * cotangent)
    with force_hand_written_kernels(True):  # the CPU's kernel, whatever the paths
        np.testing.assert_allclose(custom(x, w), plain(x, w), rtol=1e-6)
        for got, want in zip(jax.grad(custom, argnums=(0, 1))(x, w), jax.grad(plain, argnums=(0, 1))(x, w)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
