"""µP (models/core/parametrization.py, scaling/engine/mup.py): the kinds of parameters, µP at the base width
is the standard model exactly, and the coordinate check: activation updates grow with width in
the standard parametrization and stay flat under µP."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from models.core.config import ModelConfig
from scaling import coord_check
from scaling.config import ConfigError, DataConfig, MeshConfig, TrainConfig, TrialConfig
from scaling.engine import mup
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import make_mesh, logical_names
from tests.test_sharding import NUM_ITEMS, host_batches  # noqa: F401

BASE = TrialConfig(data=DataConfig(max_len=11),
                   model=ModelConfig(family="hstu", d_model=16, blocks=2, heads=2, max_positions=16, dropout=0.0,
                                     input_dropout=0.0),
                   train=TrainConfig(batch_size=8, negatives=8, learning_rate=1e-2, grad_accum=1),
                   mesh=MeshConfig("data=1"))


def trainer_for(config: TrialConfig):
    return build_trainer(config, NUM_ITEMS, make_mesh("data=1", jax.devices()[:1]), total_steps=3)


def test_parameter_kinds_follow_table_3() -> None:
    kinds = {path: mup.kind(names) for path, names in logical_names(trainer_for(BASE).boxed_params).items()}
    assert kinds["block_0/uvqk"] == kinds["block_0/out_kernel"] == "hidden"  # width x width: lr / m
    assert kinds["item_embedding"] == kinds["position_embedding"] == "vector"  # input tables: lr x 1
    assert kinds["block_0/out_bias"] == kinds["block_0/rel_pos_bias"] == "vector"
    assert mup.kind(("embed", "expert")) == "output"  # a router: width -> a fixed number


@pytest.mark.slow
def test_mup_at_its_base_width_is_the_standard_model(host_batches) -> None:
    losses = []
    for config in (BASE, dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, parametrization="mup",
                                                                             base_width=16))):
        trainer = trainer_for(config)
        with trainer.context():
            state = trainer.init(jax.random.key(0))
            run = []
            for batch in host_batches:
                state, metrics = trainer.train_step(state, trainer.train_batch(batch), jax.random.key(1))
                run.append(float(metrics["loss_sum"]))
        losses.append(run)
    assert losses[0] == losses[1]


@pytest.mark.slow(25)
def test_coordinate_check_standard_grows_with_width_mup_stays_flat(host_batches) -> None:
    """Widths 8 and 64 (heads fixed; the growth compares the two ends, so the widths between, which
    `python -m scaling.coord_check` draws, are left out here), 3 Adam steps at lr 1e-2: the largest
    per-layer growth of mean |x_t - x_0| from the narrowest to the widest width."""
    records = coord_check.check(BASE, NUM_ITEMS, host_batches, [8, 64])
    standard, mup_growth = coord_check.growth(records, "standard", 3), coord_check.growth(records, "mup", 3)
    assert standard > 3.0 and mup_growth < 1.6, (standard, mup_growth)
    # (parametrization, width, step, layer)
    assert {r["layer"] for r in records} == {"block_0", "block_1"} and len(records) == 2 * 2 * 4 * 2


def test_mup_needs_a_width() -> None:
    with pytest.raises(ConfigError, match="model.base_width=0 must be >= 1"):
        ModelConfig(family="hstu", parametrization="mup", base_width=0)
