"""Every registered family gives the same loss and gradients on a GPU's or TPU's paths (plain
autodiff, bf16 compute, one micro-batch per step) as on the CPU's (hand-written kernels, float32,
micro-batched) within bf16 tolerance: what lets $SCALING_LAB_ACCELERATOR_PATHS=1 run the model
tests on an accelerator's paths, checked in the CPU suite."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from config.fields import ConfigError
from data.interactions import Interactions
from data.pipeline import PipelineConfig, train_dataset
from data.sequences import PreprocessOptions, build_sequences
from data.split import leave_one_out
from models.core import family as families
from models.core.layers import force_hand_written_kernels, hand_written_kernels
from scaling.config import DataConfig, MeshConfig, TrainConfig, TrialConfig
from scaling.engine import compiled as trainer_module
from scaling.engine.mesh import make_mesh
from tests.model_paths import BF16_TOL, assert_gradient_close_in_bf16

ROWS, ROW_LEN, NUM_ITEMS = 4, 12, 40
# Sizes set where a family's config has the field (by field, so a new family is checked too; one
# sized by other fields is only slower). Dropout and sampled negatives stay on: their draws must
# not depend on the path.
SMALL = dict(d_model=16, heads=2, blocks=1, encoder_blocks=1, decoder_blocks=1, max_positions=16, ffn_dim=32, d_ff=32,
             hidden=32, history_items=4, user_buckets=8, ids_codebook=8, relative_buckets=8, relative_max_distance=16)


def tiny_trial(name: str) -> TrialConfig:
    fields = {field.name for field in dataclasses.fields(families.get(name).config_class)}
    model = families.model_config({"family": name, **{k: v for k, v in SMALL.items() if k in fields}})
    return TrialConfig(data=DataConfig(max_len=ROW_LEN - 1), model=model,
                       train=TrainConfig(batch_size=ROWS, steps=1, negatives=8, eval_batch_size=ROWS),
                       mesh=MeshConfig("data=1"))


def packed_batch() -> dict[str, np.ndarray]:
    """One training batch from the pipeline: packed rows of several users, with every field a
    family may read."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 12, 10)
    users = np.repeat(np.arange(len(lengths)), lengths)
    items = rng.integers(1, NUM_ITEMS + 1, len(users))
    times = np.cumsum(rng.integers(1, 10**6, len(users))).astype(np.int64)
    sequences, _ = build_sequences(Interactions(users, items, times), PreprocessOptions())
    pipeline = PipelineConfig(batch_size=ROWS, row_len=ROW_LEN, packed=True)
    return next(iter(train_dataset(leave_one_out(sequences).train, pipeline, 0, 1)))


def loss_and_gradients(config: TrialConfig, host_batch: dict, accelerator: bool, params: dict | None,
                       monkeypatch: pytest.MonkeyPatch) -> tuple[float, dict, dict, int]:
    """(mean loss, gradients, params, micro-batches) of one batch on the accelerator's or the
    CPU's paths, from `params` (fresh ones when None)."""
    monkeypatch.setenv(families.ACCELERATOR_PATHS_ENV, "1" if accelerator else "0")
    trainer = trainer_module.build_trainer(config, NUM_ITEMS, make_mesh("data=1", jax.devices()[:1]), total_steps=1)
    with trainer.context():
        params = trainer.init(jax.random.key(0))["params"] if params is None else params
        grads, loss_sum, count, _ = jax.jit(trainer.functions.gradients)(
            params, trainer.train_batch(host_batch), jax.random.key(1))
    return float(loss_sum / count), jax.device_get(grads), params, trainer.grad_accum


def in_bfloat16(config: TrialConfig) -> TrialConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, compute_dtype="bfloat16"))


@pytest.mark.slow(7)
@pytest.mark.parametrize("name", families.names())
def test_accelerator_paths_equal_the_cpu_paths(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paths alone in float32 to float32 rounding, then with bf16 compute to bf16 tolerance."""
    host_batch = packed_batch()
    assert len(set(host_batch["segment_ids"][0]) - {0}) > 1  # rows are packed
    config = tiny_trial(name)
    scores_per_row = families.get(name).scores_bytes_per_row(config.model, config.data.row_len)
    # one row's attention scores per micro-batch: the CPU path splits the tiny batch as it
    # would a large one (trainer.auto_grad_accum)
    monkeypatch.setattr(trainer_module, "CPU_SCORES_BYTES", scores_per_row)
    cpu_loss, cpu_grads, params, cpu_micro = loss_and_gradients(config, host_batch, False, None, monkeypatch)
    loss32, grads32, _, micro = loss_and_gradients(config, host_batch, True, params, monkeypatch)
    loss, grads, _, _ = loss_and_gradients(in_bfloat16(config), host_batch, True, params, monkeypatch)
    assert (cpu_micro, micro) == (ROWS if scores_per_row else 1, 1)
    assert loss32 == pytest.approx(cpu_loss, rel=1e-5) and loss == pytest.approx(cpu_loss, rel=BF16_TOL)
    for path, want in jax.tree_util.tree_leaves_with_path(cpu_grads):
        where = f"{name}: d loss / d {jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(_at(grads32, path), want, rtol=2e-4, atol=1e-6, err_msg=where)
        assert_gradient_close_in_bf16(_at(grads, path), want, where)


def test_the_setting_turns_the_cpu_kernels_off_and_refuses_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(families.ACCELERATOR_PATHS_ENV, "0")
    assert hand_written_kernels() == (jax.default_backend() == "cpu")
    monkeypatch.setenv(families.ACCELERATOR_PATHS_ENV, "1")
    assert not hand_written_kernels()
    with force_hand_written_kernels(True):
        assert hand_written_kernels()  # the kernels' own tests still reach them
    monkeypatch.setenv(families.ACCELERATOR_PATHS_ENV, "gpu")
    with pytest.raises(ConfigError, match=r"\$SCALING_LAB_ACCELERATOR_PATHS='gpu': expected 1"):
        families.accelerator_paths()


def _at(tree: dict, path: tuple) -> np.ndarray:
    for key in path:
        tree = tree[key.key]
    return tree
