"""Train-step mechanics: gradient accumulation, bf16 compute, the learning-rate schedules."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from models.core.family import ACCELERATOR_PATHS_ENV
from scaling.config import DataConfig, MeshConfig, TrainConfig, TrialConfig
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import make_mesh
from scaling.engine.step_functions import make_optimizer
from tests.model_paths import BF16_TOL, assert_gradients_close, model_config, tolerance

ROWS, ROW_LEN, ITEMS = 8, 12, 40


def batch() -> dict:
    rng = np.random.default_rng(0)
    segments = np.where(np.arange(ROW_LEN) < rng.integers(3, ROW_LEN + 1, (ROWS, 1)), 1, 0).astype(np.int32)
    items = np.where(segments > 0, rng.integers(1, ITEMS + 1, (ROWS, ROW_LEN)), 0).astype(np.int32)
    times = np.cumsum(rng.integers(1, 10**5, (ROWS, ROW_LEN)), axis=1) * (segments > 0)
    targets = np.where(np.roll(segments, -1, axis=1) > 0, np.roll(items, -1, axis=1), 0).astype(np.int32)
    targets[:, -1] = 0
    return {"items": items, "timestamps": times, "next_timestamps": np.roll(times, -1, axis=1), "targets": targets,
            "segment_ids": segments, "positions": np.broadcast_to(np.arange(ROW_LEN), (ROWS, ROW_LEN)).astype(np.int32) * segments}


def trainer_for(compute_dtype: str | None = None, **train_changes):
    dtype = {"compute_dtype": compute_dtype} if compute_dtype else {}
    config = TrialConfig(
        data=DataConfig(max_len=ROW_LEN - 1),
        model=model_config(family="hstu", d_model=16, blocks=1, heads=2, max_positions=ROW_LEN, dropout=0.0,
                           input_dropout=0.0, **dtype),
        train=TrainConfig(batch_size=ROWS, steps=3, eval_batch_size=ROWS, loss="full_softmax", **train_changes),
        mesh=MeshConfig("data=1"),
    )
    return build_trainer(config, ITEMS, make_mesh("data=1", jax.devices()[:1]), total_steps=3)


def gradients(trainer, host_batch):
    with trainer.context():
        state = trainer.init(jax.random.key(0))
        return jax.device_get(jax.jit(trainer.functions.gradients)(
            state["params"], trainer.train_batch(host_batch), jax.random.key(1)))[:3]


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch() -> None:
    host_batch = batch()
    whole, loss_whole, count_whole = gradients(trainer_for(grad_accum=1), host_batch)
    accumulated, loss_acc, count_acc = gradients(trainer_for(grad_accum=4), host_batch)
    assert count_whole == count_acc and loss_whole == pytest.approx(loss_acc, rel=tolerance(1e-5))
    assert_gradients_close(accumulated, whole, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_bfloat16_compute_tracks_float32() -> None:
    host_batch = batch()
    _, loss32, count = gradients(trainer_for("float32"), host_batch)
    grads16, loss16, _ = gradients(trainer_for("bfloat16"), host_batch)
    assert loss16 / count == pytest.approx(loss32 / count, rel=BF16_TOL)
    assert all(g.dtype == np.float32 for g in jax.tree.leaves(grads16))  # parameters stay float32


def step_sizes(train: TrainConfig, total_steps: int, count: int) -> np.ndarray:
    """|update| per step for a constant gradient of 1: Adam's normalised step, i.e. the rate."""
    optimizer = make_optimizer(train, total_steps)
    params = {"w": np.float32(0.0)}
    state = optimizer.init(params)
    sizes = []
    for _ in range(count):
        updates, state = optimizer.update({"w": np.float32(1.0)}, state, params)
        sizes.append(abs(float(updates["w"])))
    return np.array(sizes)


def test_schedules() -> None:
    constant = step_sizes(TrainConfig(learning_rate=1e-3), 100, 5)
    np.testing.assert_allclose(constant, 1e-3, rtol=1e-4)
    cosine = step_sizes(TrainConfig(learning_rate=1.0, schedule="cosine", warmup_steps=10), 110, 111)
    assert cosine[0] == 0.0 and cosine[5] == pytest.approx(0.5, rel=1e-3) and cosine[10] == pytest.approx(1.0, rel=1e-3)
    assert cosine[60] == pytest.approx(0.5, rel=1e-3) and cosine[110] == pytest.approx(0.0, abs=1e-6)
    warmup_only = step_sizes(TrainConfig(learning_rate=1.0, warmup_steps=4), 100, 8)
    np.testing.assert_allclose(warmup_only, [0, 0.25, 0.5, 0.75, 1, 1, 1, 1], rtol=1e-3, atol=1e-6)
    rsqrt = step_sizes(TrainConfig(learning_rate=0.01, schedule="rsqrt", warmup_steps=4), 100, 17)
    np.testing.assert_allclose(rsqrt[:5], 0.01, rtol=1e-3)  # TIGER: constant over the warm-up, then 1 / sqrt(step)
    np.testing.assert_allclose(rsqrt[[5, 9, 16]], [0.01 * np.sqrt(4 / 5), 0.01 * np.sqrt(4 / 9), 0.005], rtol=1e-3)


@pytest.mark.slow
def test_step_returns_the_counts_model_flops_need() -> None:
    from scaling.engine import flops
    from data.pipeline import segment_lengths

    host_batch = batch()
    trainer = trainer_for()
    with trainer.context():
        state = trainer.init(jax.random.key(0))
        _, metrics = trainer.train_step(state, trainer.train_batch(host_batch), jax.random.key(1))
    lengths = segment_lengths(host_batch)
    counts = {name: float(value) for name, value in metrics["counts"].items()}
    assert counts["tokens"] == lengths.sum()
    assert counts["squared_lengths"] == np.sum(lengths.astype(np.int64) ** 2)
    assert counts["positions"] == float(metrics["positions"]) == np.sum(host_batch["targets"] > 0)
    model = trainer.config.model
    from_counts = flops.model_flops_from_counts(model, trainer.config.train, counts, ITEMS)
    assert from_counts == pytest.approx(flops.model_flops(model, lengths, "full_softmax", 128, ITEMS,
                                                          int(np.sum(host_batch["targets"] > 0))))


def test_auto_grad_accum_keeps_cpu_attention_scores_cache_sized(monkeypatch: pytest.MonkeyPatch) -> None:
    from scaling.engine.compiled import CPU_SCORES_BYTES, auto_grad_accum
    from scaling.presets import preset

    large = preset("hstu-large-ml1m")  # 2 heads, rows of 201: 323 KB of scores per row
    monkeypatch.setenv(ACCELERATOR_PATHS_ENV, "1")
    assert auto_grad_accum(large, make_mesh("data=1", jax.devices()[:1])) == 1  # as on an accelerator
    monkeypatch.setenv(ACCELERATOR_PATHS_ENV, "0")  # the CPU's micro-batching, on any paths
    assert auto_grad_accum(large, make_mesh("data=1", jax.devices()[:1])) == 16  # 8 rows = 2.6 MB
    assert auto_grad_accum(large, make_mesh("data=8", jax.devices()[:8])) == 2  # 8 rows on each device
    per_row = large.model.heads * large.data.row_len ** 2 * 4
    assert 8 * per_row <= CPU_SCORES_BYTES < 16 * per_row
    explicit = dataclasses.replace(large, train=dataclasses.replace(large.train, grad_accum=4))
    assert auto_grad_accum(explicit, make_mesh("data=1", jax.devices()[:1])) == 4
    # batch 12 over 8 devices has no valid split: 1, and check_batch_fits_mesh names the problem
    odd = dataclasses.replace(large, train=dataclasses.replace(large.train, batch_size=12))
    assert auto_grad_accum(odd, make_mesh("data=8", jax.devices()[:8])) == 1
