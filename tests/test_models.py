"""The decoder models against a plain NumPy HSTU written from ../shared/specs/hstu.md, one user at
a time, and packed rows against one user per row (no leakage across segments)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.core.config import ModelConfig
from models.core.losses import full_softmax_loss, sampled_softmax_loss
from models.decoder_only.decoder import build_model
from tests.model_paths import model_config, tolerance

ROW, ITEMS = 14, 30
CONFIG = dict(d_model=8, blocks=2, heads=2, dqk=4, dv=3, max_positions=16, dropout=0.0, input_dropout=0.0)


def np_layer_norm(x: np.ndarray, eps: float) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def hstu_reference(params: dict, cfg: ModelConfig, items: np.ndarray, times: np.ndarray, next_times: np.ndarray) -> np.ndarray:
    """One user's outputs, loop by loop, as the spec states them."""
    n, d, h, dqk, dv, p = len(items), cfg.d_model, cfg.heads, cfg.dqk, cfg.dv, cfg.max_positions
    x = params["item_embedding"][items] * np.sqrt(d) + params["position_embedding"][np.arange(n)]
    for b in range(cfg.blocks):
        block = params[f"block_{b}"]
        uvqk = silu(np_layer_norm(x, 1e-6) @ block["uvqk"])
        u, v, q, k = uvqk[:, :h * dv], uvqk[:, h * dv:2 * h * dv], uvqk[:, 2 * h * dv:2 * h * dv + h * dqk], uvqk[:, 2 * h * dv + h * dqk:]
        out = np.zeros((n, h * dv))
        for head in range(h):
            qh, kh, vh = q[:, head * dqk:(head + 1) * dqk], k[:, head * dqk:(head + 1) * dqk], v[:, head * dv:(head + 1) * dv]
            for i in range(n):
                for j in range(i + 1):
                    delta = next_times[i] - times[j]
                    bucket = int(np.clip(np.floor(np.log(max(abs(delta), 1)) / 0.301), 0, cfg.time_buckets))
                    rab = block["rel_pos_bias"][j - i + p - 1] + block["rel_time_bias"][bucket]
                    out[i, head * dv:(head + 1) * dv] += silu(qh[i] @ kh[j] + rab) / cfg.divisor * vh[j]
        x = x + (u * np_layer_norm(out, 1e-6)) @ block["out_kernel"] + block["out_bias"]
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def users(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    found = []
    for n in (5, 6, 3, 9):
        gaps = rng.choice([0, 1, 30, 4000, 90_000, 2_000_000], n)  # ties and many buckets
        found.append((rng.integers(1, ITEMS + 1, n), 1_000_000 + np.cumsum(gaps)))
    return found


def rows(segments: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    row = {k: np.zeros(ROW, np.int32) for k in ("items", "timestamps", "next_timestamps", "segment_ids", "positions")}
    at = 0
    for s, (items, times) in enumerate(segments, start=1):
        span = slice(at, at + len(items))
        row["items"][span], row["timestamps"][span] = items, times - 1_000_000
        row["next_timestamps"][span] = np.append(times[1:], times[-1]) - 1_000_000
        row["segment_ids"][span], row["positions"][span] = s, np.arange(len(items))
        at += len(items)
    return row


def batch_of(row_list: list[dict]) -> dict[str, jnp.ndarray]:
    return {k: jnp.asarray(np.stack([r[k] for r in row_list])) for k in row_list[0]}


@pytest.fixture(scope="module", params=["hstu", "sasrec"])
def model_and_params(request):
    cfg = model_config(family=request.param, ffn_dim=12, **CONFIG)
    model = build_model(cfg, ITEMS)
    example = batch_of([rows(users()[:1])])
    params = nn.unbox(model.init(jax.random.key(0), example)["params"])
    apply = jax.jit(lambda p, b: model.apply({"params": p}, b))
    return cfg, params, apply


@pytest.mark.slow
def test_packed_rows_equal_one_user_per_row(model_and_params) -> None:
    cfg, params, apply = model_and_params
    people = users()
    packed = [rows(people[:2]), rows(people[2:])]  # 5 + 6 and 3 + 9 tokens
    single = [rows([person]) for person in people]
    out_packed = np.asarray(apply(params, batch_of(packed)))
    out_single = np.asarray(apply(params, batch_of(single)))
    np.testing.assert_allclose(out_packed[0, :5], out_single[0, :5], atol=1e-5)
    np.testing.assert_allclose(out_packed[0, 5:11], out_single[1, :6], atol=1e-5)
    np.testing.assert_allclose(out_packed[1, :3], out_single[2, :3], atol=1e-5)
    np.testing.assert_allclose(out_packed[1, 3:12], out_single[3, :9], atol=1e-5)
    assert np.all(out_packed[0, 11:] == 0) and np.all(out_single[2, 3:] == 0)  # padding outputs are zero


@pytest.mark.slow
def test_hstu_equals_the_numpy_reference(model_and_params) -> None:
    cfg, params, apply = model_and_params
    if cfg.family != "hstu":
        pytest.skip("the NumPy reference is the HSTU spec")
    people = users(1)
    out = np.asarray(apply(params, batch_of([rows([person]) for person in people])))
    numpy_params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    for index, (items, times) in enumerate(people):
        expected = hstu_reference(numpy_params, cfg, items, times - 1_000_000, np.append(times[1:], times[-1]) - 1_000_000)
        np.testing.assert_allclose(out[index, :len(items)], expected, atol=tolerance(2e-5))


def test_losses_against_direct_formulas() -> None:
    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(2, 3, 4))
    outputs /= np.linalg.norm(outputs, axis=-1, keepdims=True)
    table = rng.normal(size=(9, 4))  # the raw item table: the losses normalise its rows
    candidates = table / np.linalg.norm(table, axis=-1, keepdims=True)
    targets = np.array([[1, 2, 0], [3, 3, 8]])
    negatives = rng.integers(1, 9, (2, 3, 5))
    negatives[1, 0, 0] = 3  # an accidental hit
    tau = 0.05
    total, count = 0.0, 0
    full_total = 0.0
    for b in range(2):
        for t in range(3):
            if targets[b, t] == 0:
                continue
            positive = outputs[b, t] @ candidates[targets[b, t]] / tau
            sampled = [(-5e4 if n == targets[b, t] else outputs[b, t] @ candidates[n] / tau) for n in negatives[b, t]]
            logits = np.array([positive, *sampled])
            total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - positive
            every = outputs[b, t] @ candidates[1:].T / tau
            full_total += np.log(np.sum(np.exp(every))) - positive
            count += 1
    for dense in (True, False):
        loss, positions = sampled_softmax_loss(jnp.asarray(outputs), jnp.asarray(targets), jnp.asarray(table),
                                               jnp.asarray(negatives), tau, score_all_items=dense)
        assert float(positions) == count and float(loss) == pytest.approx(total, rel=1e-4)
    full, _ = full_softmax_loss(jnp.asarray(outputs), jnp.asarray(targets), jnp.asarray(table), tau)
    assert float(full) == pytest.approx(full_total, rel=1e-4)
    padded = np.concatenate([table, np.zeros((3, 4))])  # a padded catalogue table: its extra rows are no class
    full, _ = full_softmax_loss(jnp.asarray(outputs), jnp.asarray(targets), jnp.asarray(padded), tau, num_items=8)
    assert float(full) == pytest.approx(full_total, rel=1e-4)
