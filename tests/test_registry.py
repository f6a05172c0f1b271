"""The family seam: registry behaviour, the engine free of family logic, the CPU kernels and the
plain autodiff path giving the same numbers, and top-K evaluation lists turned into ranks."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from config.fields import ConfigError
from data.ranking import ranking_metrics, ranks_from_scores, ranks_from_top_k
from models.core import family as families
from models.core.layers import force_hand_written_kernels
from scaling.config import DataConfig, MeshConfig, ModelConfig, TrainConfig, TrialConfig
from scaling.engine import flops, xla_cost
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import make_mesh

REPO_ROOT = Path(__file__).resolve().parents[1]
ENGINE = [*sorted((REPO_ROOT / "scaling").glob("*.py")), *sorted((REPO_ROOT / "sweeps").glob("*.py")),
          *sorted((REPO_ROOT / "benchmarks").glob("*.py"))]
CONFIGURATION = {"presets.py", "accelerator_shapes.py"}  # named trial and benchmark configs: data, not logic


def test_registry_knows_the_builtin_families_and_refuses_a_second_one_under_a_name() -> None:
    assert {"hstu", "sasrec"} <= set(families.names())
    assert families.of(ModelConfig(family="sasrec")) is families.get("sasrec")

    class Impostor(families.get("hstu").__class__):
        pass

    with pytest.raises(ValueError, match="already registered"):
        families.register(Impostor())
    with pytest.raises(ConfigError, match="^model.family='nope'; known: "):
        families.get("nope")


def test_a_plugin_module_that_cannot_be_imported_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setenv(families.PLUGINS_ENV, "no_such_module_here")
    monkeypatch.setattr(families, "_plugins_loaded", False)
    with pytest.raises(ConfigError, match=r"\$SCALING_LAB_FAMILIES: cannot import 'no_such_module_here'"):
        families.get("not-registered-either")


def test_the_engine_names_no_family_and_imports_no_family_module() -> None:
    """scaling/, sweeps/ and benchmarks/ reach families only through models.core.family: no
    comparison with a family name, no import of a family's modules."""
    family_modules = {"models.decoder_only.hstu", "models.decoder_only.sasrec", "models.decoder_only.decoder", "models.core.attention", "models.core.losses",
                      "models.core.layers"}
    offences = []
    for path in ENGINE:
        if path.name in CONFIGURATION:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in family_modules:
                offences.append(f"{path.name}: imports {node.module}")
            if isinstance(node, ast.Constant) and node.value in families.BUILTIN_MODULES:
                offences.append(f"{path.name}:{node.lineno}: the literal {node.value!r}")
    assert not offences, offences


def _gradients(family: str, hand_written: bool, batch: dict):
    model = ModelConfig(family=family, d_model=16, blocks=1, heads=2, max_positions=12, dropout=0.0, input_dropout=0.0)
    config = TrialConfig(data=DataConfig(max_len=11), model=model,
                         train=TrainConfig(batch_size=4, grad_accum=1, negatives=8), mesh=MeshConfig("data=1"))
    trainer = build_trainer(config, 40, make_mesh("data=1", jax.devices()[:1]), total_steps=1)
    with force_hand_written_kernels(hand_written), trainer.context():
        state = trainer.init(jax.random.key(0))
        device_batch = trainer.train_batch(batch)
        step = jax.jit(lambda p, b, r: trainer.functions.gradients(p, b, r))  # a fresh trace per mode
        lowered = step.lower(state["params"], device_batch, jax.random.key(1))
        grads, loss_sum, count, _ = jax.device_get(step(state["params"], device_batch, jax.random.key(1)))
    with force_hand_written_kernels(hand_written):
        executed = flops.executed_flops(model, 4, 12, "sampled_softmax", 8, 40)
    return grads, float(loss_sum), xla_cost.dot_flops(lowered.as_text()), executed


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hstu", "sasrec"])
def test_cpu_kernels_and_plain_autodiff_give_the_same_numbers(family: str) -> None:
    from benchmarks.throughput import random_batch

    batch = random_batch(4, 12, 40, seed=3)
    batch["segment_ids"][:, 9:] = 0  # some padding
    cpu, cpu_loss, cpu_dots, cpu_executed = _gradients(family, True, batch)
    plain, plain_loss, plain_dots, plain_executed = _gradients(family, False, batch)
    assert cpu_loss == pytest.approx(plain_loss, rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5), cpu, plain)
    assert cpu_dots > plain_dots  # the two programs differ: row means and bias gradients as products
    assert cpu_dots == pytest.approx(cpu_executed, rel=0.02) and plain_dots == pytest.approx(plain_executed, rel=0.02)


def test_top_k_lists_give_the_ranks_of_the_exact_scorer_up_to_k() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 31))
    targets = rng.integers(1, 31, 50)
    history = np.zeros((50, 1), np.int64)
    exact = ranks_from_scores(scores, targets, history)
    masked = scores.copy()
    masked[:, 0] = -np.inf
    top_k = np.argsort(-masked, axis=1)[:, :10]
    from_lists = ranks_from_top_k(top_k, targets)
    np.testing.assert_array_equal(from_lists[exact <= 10], exact[exact <= 10])
    assert np.all(np.isinf(from_lists[exact > 10]))
    exact_metrics, list_metrics = ranking_metrics(exact, (10,)), ranking_metrics(from_lists, (10,))
    assert list_metrics["hr@10"] == exact_metrics["hr@10"] and list_metrics["ndcg@10"] == exact_metrics["ndcg@10"]
    assert list_metrics["mrr"] < exact_metrics["mrr"]  # misses count as 0, not 1 / rank


OPTIONAL_PARTS = {"hstu": [{"feed_forward_dim": 8}, {"relative_bias": "none"}]}  # parameters that come and go


def test_param_counts_equal_the_parameter_tree_for_every_family() -> None:
    for name in families.names():
        family = families.get(name)
        for parts in [{}, *OPTIONAL_PARTS.get(name, [])]:
            config = dataclasses.replace(family.config_class(), **parts)
            row_len = min(12, getattr(config, "max_positions", 12))
            model = family.build(config, TrainConfig(), 25)
            boxed = jax.eval_shape(model.init, jax.random.key(0), family.example_batch(config, 1, row_len))
            total = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(boxed))
            counted = family.param_counts(config, 25)
            assert counted["params"] == total, (name, parts)
            assert counted["params_non_embedding"] <= counted["params_active"] <= counted["params"]
            assert dataclasses.is_dataclass(config) and config.family == name
