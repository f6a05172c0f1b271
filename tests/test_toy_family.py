"""A model family registered from this file alone (a mean-of-history MLP) trains through
`scaling.train` and a sweep, with no change anywhere in models/, scaling/ or sweeps/.

The sweep runs its trial in a subprocess, which learns of the family through
$SCALING_LAB_FAMILIES=tests.test_toy_family (this module, imported by the registry).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any, Literal, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from config.fields import fraction, positive
from models.core import axes, family
from models.core.family import BatchField, FamilyConfig
from models.core.layers import l2_normalize, logical_param

TOKENS = (axes.BATCH, axes.LENGTH)
TRAIN_FIELDS = {"items": BatchField(np.int32, TOKENS), "targets": BatchField(np.int32, TOKENS),
                "segment_ids": BatchField(np.int32, TOKENS)}
EVAL_FIELDS = {**TRAIN_FIELDS, "eval_position": BatchField(np.int32, (axes.BATCH,)),
               "eval_target": BatchField(np.int32, (axes.BATCH,)), "eval_valid": BatchField(np.bool_, (axes.BATCH,))}
TOP_K = 20  # shorter than the lab's K = 50, 200: those metrics are left out


@dataclasses.dataclass(frozen=True)
class MeanMLPConfig(FamilyConfig):
    family: Literal["mean_mlp"] = "mean_mlp"
    d_model: int = positive(16)
    hidden: int = positive(32)
    dropout: float = fraction(0.0)
    norm_penalty: float = 1e-3  # an aux loss term: weight of the mean squared pre-norm output


class MeanMLP(nn.Module):
    """Each position's output: an MLP of the running mean of its segment's item embeddings."""

    config: MeanMLPConfig
    num_items: int

    @nn.compact
    def __call__(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        table = logical_param(self, "item_embedding", nn.initializers.normal(0.1), (self.num_items + 1, cfg.d_model),
                              (axes.VOCAB, axes.EMBED))
        w_in = logical_param(self, "w_in", nn.initializers.lecun_normal(), (cfg.d_model, cfg.hidden), (axes.EMBED, axes.MLP))
        w_out = logical_param(self, "w_out", nn.initializers.lecun_normal(), (cfg.hidden, cfg.d_model), (axes.MLP, axes.EMBED))
        segments = batch["segment_ids"]
        length = segments.shape[1]
        seen = (segments[:, :, None] == segments[:, None, :]) & (segments > 0)[:, :, None] & jnp.tri(length, dtype=bool)
        weights = seen / jnp.maximum(seen.sum(-1, keepdims=True), 1)
        mean = jnp.einsum("bij,bjd->bid", weights, jnp.take(table, batch["items"], axis=0))
        raw = jnp.where((segments > 0)[..., None], jax.nn.relu(mean @ w_in) @ w_out, 0.0)  # no NaN grads from padding
        return l2_normalize(raw), jnp.mean(jnp.square(raw))


@dataclasses.dataclass(frozen=True)
class MeanMLPModel(family.Model):
    module: MeanMLP
    train: Any
    num_items: int

    def init(self, rng, batch):
        return self.module.init({"params": rng}, batch)["params"]

    def _logits(self, params, batch):
        outputs, penalty = self.module.apply({"params": params}, batch)
        logits = outputs @ l2_normalize(params["item_embedding"]).T / self.train.temperature
        return logits.at[..., 0].set(-jnp.inf), penalty

    def loss_sums(self, params, batch, rng):
        logits, penalty = self._logits(params, batch)
        targets = batch["targets"]
        per_position = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        supervised = targets > 0
        aux = {"losses": {"norm_penalty": self.module.config.norm_penalty * penalty}, "metrics": {"raw_norm2": penalty}}
        return jnp.sum(jnp.where(supervised, per_position, 0.0)), jnp.sum(supervised).astype(jnp.float32), aux

    def evaluate(self, params, batch):
        """Top-K lists (the shared metrics turn them into HR / NDCG / MRR), history excluded."""
        logits, _ = self._logits(params, batch)
        query = jnp.take_along_axis(logits, batch["eval_position"][:, None, None], axis=1)[:, 0]
        target = batch["eval_target"]
        history = jnp.where(batch["items"] == target[:, None], 0, batch["items"])
        query = query.at[jnp.arange(query.shape[0])[:, None], history].set(-jnp.inf).at[:, 0].set(-jnp.inf)
        return {"top_k": jax.lax.top_k(query, TOP_K)[1], "target": target, "valid": batch["eval_valid"]}

    def step_counts(self, batch):
        return {"tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)}


class MeanMLPFamily(family.Family):
    name = "mean_mlp"
    config_class = MeanMLPConfig

    def build(self, config, train, num_items):
        return MeanMLPModel(MeanMLP(config, num_items), train, num_items)

    def train_fields(self, config):
        return TRAIN_FIELDS

    def eval_fields(self, config):
        return EVAL_FIELDS

    def model_flops(self, config, train, counts, num_items):
        mlp = 2.0 * 2 * config.d_model * config.hidden * counts["tokens"]
        return 3.0 * (mlp + 2.0 * config.d_model * num_items * counts["positions"])

    def param_counts(self, config, num_items):
        non_embedding = 2 * config.d_model * config.hidden
        total = non_embedding + (num_items + 1) * config.d_model
        return {"params": total, "params_non_embedding": non_embedding, "params_active": total}


family.register(MeanMLPFamily())

COMMON = ["--data", "ml-100k", "--steps", "8", "--set", "data.max_len=20", "--set", "train.batch_size=32",
          "--set", "train.log_every=4", "--set", "train.eval_batch_size=256"]


def test_toy_family_trains_through_scaling_train(tmp_path: Path, use_lab_cache: Path, capsys) -> None:
    from scaling import train

    workdir = tmp_path / "toy"
    assert train.main(["--model", "mean_mlp", "--workdir", str(workdir), *COMMON, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "ok" and result["model"] == "mean_mlp" and result["steps"] == 8
    assert result["params"] == result["params_active"] == 16 * 32 * 2 + 1683 * 16 and result["d_model"] == 16
    assert 0 < result["ndcg@10"] <= result["hr@10"] <= 1 and result["mrr"] > 0
    assert result["hr@50"] is None and result["hr@200"] is None  # beyond the top-20 lists
    assert result["test_loss"] is None  # its evaluation gives top-K lists, no loss
    assert result["train_flops"] > 0 and result["tokens"] > 0 and np.isfinite(result["final_train_loss"])
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    trained = [line for line in logged if "learning/loss" in line]
    assert [line["step"] for line in trained] == [4, 8]
    assert all(line["aux/raw_norm2"] > 0 and line["aux/norm_penalty"] > 0 for line in trained)
    assert json.loads((workdir / "param_axes.json").read_text())["w_in"] == ["embed", "mlp"]
    config = json.loads((workdir / "config.json").read_text())["model"]
    assert config == {"family": "mean_mlp", "d_model": 16, "hidden": 32, "dropout": 0.0, "norm_penalty": 1e-3,
                      "compute_dtype": "float32", "parametrization": "standard", "base_width": 64}


@pytest.mark.slow
def test_aux_loss_terms_enter_the_gradient(use_lab_cache: Path) -> None:
    from scaling.config import DataConfig, MeshConfig, TrainConfig, TrialConfig
    from scaling.engine.mesh import make_mesh
    from scaling.engine.compiled import build_trainer

    def gradients(penalty: float):
        config = TrialConfig(data=DataConfig(max_len=7), model=MeanMLPConfig(norm_penalty=penalty),
                             train=TrainConfig(batch_size=4, grad_accum=1), mesh=MeshConfig("data=1"))
        trainer = build_trainer(config, 30, make_mesh("data=1", jax.devices()[:1]), total_steps=1)
        batch = {"items": np.tile(np.arange(1, 9, dtype=np.int32), (4, 1)), "segment_ids": np.ones((4, 8), np.int32)}
        batch["targets"] = np.roll(batch["items"], -1, axis=1) * (np.arange(8) < 7)
        with trainer.context():
            state = trainer.init(jax.random.key(0))
            return jax.device_get(trainer.functions.gradients(state["params"], trainer.train_batch(batch), jax.random.key(1)))

    plain, penalised = gradients(0.0), gradients(10.0)
    assert plain[1] == penalised[1]  # the loss sum itself is the data term
    assert penalised[3]["losses"]["norm_penalty"] == pytest.approx(10.0 * penalised[3]["metrics"]["raw_norm2"])
    assert not np.allclose(plain[0]["w_out"], penalised[0]["w_out"])


@pytest.mark.slow(20)
def test_toy_family_runs_in_a_sweep(tmp_path: Path, use_lab_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeps import __main__ as sweeps_main

    monkeypatch.setenv(family.PLUGINS_ENV, "tests.test_toy_family")  # for the trial subprocesses
    spec = tmp_path / "toy_sweep.py"
    spec.write_text(textwrap.dedent("""
        from models.core.config import ModelConfig
        from scaling.config import DataConfig, TrainConfig, TrialConfig
        from sweeps.spec import Sweep, axis
        BASE = TrialConfig(data=DataConfig(max_len=20),
                           model=ModelConfig(family="mean_mlp"),
                           train=TrainConfig(batch_size=32, steps=4, log_every=2, eval_batch_size=256))
        SWEEP = Sweep("toy_sweep", BASE, axis("width", "model.hidden", [8, 16]))
    """))
    workdir = tmp_path / "sweep"
    assert sweeps_main.main(["run", str(spec), "--workdir", str(workdir)]) == 0
    records = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["width"] for r in records) == [8, 16]
    assert all(r["status"] == "ok" and r["model"] == "mean_mlp" for r in records)
    assert {r["params_non_embedding"] for r in records} == {2 * 16 * 8, 2 * 16 * 16}
    report = (workdir / "report" / "report.md").read_text()  # fitted on train loss: its evaluation has no loss
    assert "| mean_mlp |" in report and "no loss column" not in report
