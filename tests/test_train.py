"""The training entry point end to end on ML-100K with the tiny preset: outputs, resume, errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling import train as train_module
from scaling.config import TrainConfig
from scaling.engine import trial
from scaling.engine.compiled import Trainer
from scaling.engine.result import RESULT_METRICS
from scaling.engine.selection import Evaluations
from scaling.presets import preset
from scaling.services.tensorboard import read_scalars
from tests.conftest import xla_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"model", "params", "params_non_embedding", "tokens", "steps", "train_flops", "wall_seconds", "mfu",
               "peak_flops", "final_train_loss", "eval_loss", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@50", "ndcg@50",
               "mrr", "status", "resumed_from_step", "selected_step", "last_hr@10", "last_ndcg@5",
               "history_included_hr@10"}


def tiny(steps: int = 12, checkpoint_every: int = 0):
    """The tiny preset, evaluated at steps 4 and 8 and at the end."""
    config = preset("tiny")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, steps=steps, log_every=4, eval_every=4,
                                                                 checkpoint_every=checkpoint_every))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, lab_cache, ml100k):
    workdir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCALING_LAB_CACHE", str(lab_cache))
        result = trial.run(tiny(), workdir, profile=(5, 6))
    return workdir, result


@pytest.mark.slow
def test_result_has_every_field_with_sane_values(finished_run) -> None:
    workdir, result = finished_run
    assert RESULT_KEYS <= set(result)
    assert result["status"] == "ok" and result["steps"] == 12 and result["resumed_from_step"] is None
    assert 0 < result["mfu"] < 1 and result["peak_flops"] > 0
    assert 0 <= result["ndcg@10"] <= result["hr@10"] <= result["hr@50"] <= 1
    assert result["params"] > result["params_non_embedding"] > 0
    # 12 steps x 32 rows of up to 21 real tokens each; padding excluded.
    assert 12 * 32 * 2 <= result["tokens"] <= 12 * 32 * 21
    assert result["train_flops"] > 0 and np.isfinite(result["final_train_loss"]) and np.isfinite(result["eval_loss"])
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [line["step"] for line in lines if "learning/loss" in line]
    assert logged == [4, 8, 12]
    evals = [line for line in lines if "eval/valid_hr@10" in line]
    assert [line["step"] for line in evals] == [4, 8, 12] and result["plateau_evals"] == 3
    # the reported test metrics are those of the first evaluation with the best validation HR@10
    best = max(evals, key=lambda line: (line["eval/valid_hr@10"], -line["step"]))
    assert result["selected_step"] == best["step"] and result["valid_hr@10"] == best["eval/valid_hr@10"]
    for key in ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr", "history_included_hr@10"):
        assert result[key] == best[f"eval/test_{key}"], key
        if key in RESULT_METRICS:
            assert result[f"last_{key}"] == evals[-1][f"eval/test_{key}"], key
    for line in evals:  # history kept: the targets compete with the items already seen
        assert line["eval/test_history_included_hr@10"] <= line["eval/test_hr@10"]
        assert line["eval/test_history_included_mrr"] < line["eval/test_mrr"]
    axes = json.loads((workdir / "param_axes.json").read_text())
    assert axes["item_embedding"] == ["table_rows", "embed"] and axes["block_0/uvqk"] == ["embed", "qkv"]
    assert lines[-1]["progress/tokens"] == result["tokens"] and lines[-1]["progress/train_flops"] == result["train_flops"]


def test_tensorboard_progress_file_and_profile_trace(finished_run) -> None:
    """Every number of metrics.jsonl is a TensorBoard scalar at its step (@ becomes _ in a tag);
    progress.json says done; steps 5..6 were traced."""
    workdir, result = finished_run
    scalars = read_scalars(workdir)
    for line in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()):
        for key, value in line.items():
            if key != "step" and isinstance(value, (int, float)):
                assert (line["step"], pytest.approx(value, rel=1e-6)) in scalars[key.replace("@", "_")], key
    assert {"learning/loss", "perf/mfu", "perf/tokens_per_second", "eval/valid_loss", "eval/test_hr_10"} <= set(scalars)
    progress = json.loads((workdir / "progress.json").read_text())
    assert progress["phase"] == "done" and progress["step"] == progress["total_steps"] == 12
    assert list((workdir / "profile").glob("plugins/profile/*/*.xplane.pb"))


@pytest.mark.slow
def test_interrupted_run_resumes_bitwise(tmp_path, lab_cache, monkeypatch, finished_run) -> None:
    """A run killed after its step-6 checkpoint, restarted, ends exactly where an uninterrupted run does."""
    monkeypatch.setenv("SCALING_LAB_CACHE", str(lab_cache))
    calls = {"n": 0}
    real_train_batch = Trainer.train_batch

    def dies_at_step_8(self, batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated preemption")
        return real_train_batch(self, batch)

    monkeypatch.setattr(Trainer, "train_batch", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        trial.run(tiny(checkpoint_every=6), tmp_path)
    monkeypatch.setattr(Trainer, "train_batch", real_train_batch)
    resumed = trial.run(tiny(checkpoint_every=6), tmp_path)
    assert resumed["resumed_from_step"] == 6 and resumed["steps"] == 12
    assert resumed["wall_seconds"] > resumed["wall_seconds_this_run"]  # the first run's time to its checkpoint counts
    _, uninterrupted = finished_run
    for key in ("hr@10", "ndcg@10", "mrr", "eval_loss", "test_loss", "tokens", "train_flops", "selected_step",
                "valid_hr@10", "last_hr@10", "hr@5", "plateau_evals", "plateau_hr@10"):  # the step-4 evaluation's selection came through the checkpoint
        assert resumed[key] == uninterrupted[key], key


@pytest.mark.slow
def test_cli_rejects_bad_config_with_one_line(tmp_path, capsys) -> None:
    from scaling import train as train_module
    from scaling.engine import trial

    arguments = ["--preset", "tiny", "--workdir", str(tmp_path)]
    for extra, message in ((["--set", "model.blockz=2"], "error: unknown config key model.blockz for model.family='hstu'; known: "),
                           (["--set", "train.batch_size=ten"], "error: train.batch_size='ten' is not an integer"),
                           (["--profile", "3:1"], "error: --profile '3:1': expected START:STOP")):
        assert train_module.main(arguments + extra) == 2, extra
        stderr = capsys.readouterr().err
        assert stderr.strip().splitlines()[-1].startswith(message)
        assert "Traceback" not in stderr
    # and as a process of its own with one device, as a user meets it
    done = subprocess.run([sys.executable, "-m", "scaling.train", *arguments, "--mesh", "data=3"], cwd=REPO_ROOT,
                          env=dict(os.environ, XLA_FLAGS=xla_flags(1)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: mesh spec 'data=3' needs 3 devices, but 1 are available")
    assert "Traceback" not in done.stderr


def test_train_config_json_round_trip_and_overrides() -> None:
    from scaling.config import ConfigError, from_json, with_overrides

    config = preset("hstu-large-ml1m")
    assert from_json(config.to_json()) == config
    changed = with_overrides(config, ["model.blocks=4", "train.learning_rate=3e-4", "data.packed=true"])
    assert (changed.model.blocks, changed.train.learning_rate, changed.data.packed) == (4, 3e-4, True)
    assert changed.trial_id != config.trial_id
    with pytest.raises(ConfigError, match="train.loss='hinge'; allowed: sampled_softmax, full_softmax"):
        with_overrides(config, ["train.loss=hinge"])
    with pytest.raises(ConfigError, match="unknown config key train.lr"):
        from_json(json.dumps({"train": {"lr": 1}}))
    assert isinstance(changed.train, TrainConfig)


def test_plateau_is_the_mean_of_the_last_ten_test_evaluations() -> None:
    evaluations = Evaluations()
    assert evaluations.plateau() == {}
    for s in range(1, 13):
        evaluations.offer(s, {"hr@10": 1.0}, {"hr@10": s / 100, "ndcg@10": s / 200, "mrr": 0.5})
    got = evaluations.plateau()
    assert got["plateau_evals"] == 10
    assert got["plateau_hr@10"] == pytest.approx(sum(range(3, 13)) / 1000)
    assert got["plateau_ndcg@10"] == pytest.approx(sum(range(3, 13)) / 2000)
    # through a checkpoint's JSON, and from the records logged up to a checkpoint written before it kept them
    assert Evaluations.from_state(json.loads(json.dumps(evaluations.to_state()))).plateau() == got
    logged = [{"step": 1, "learning/loss": 3.0}]
    logged += [{"step": s, "eval/test_hr@10": s / 100, "eval/test_ndcg@10": s / 200, "eval/valid_hr@10": 1.0}
               for s in range(1, 13)]
    old = Evaluations.from_state({"best_eval": evaluations.best.to_state()}, logged)
    assert old.plateau() == got and old.best.step == 1
    assert Evaluations.from_state({}, []).plateau() == {}


@pytest.mark.slow
def test_a_non_finite_step_fails_the_trial_and_keeps_only_good_checkpoints(tmp_path, lab_cache, ml100k,
                                                                           monkeypatch, capsys) -> None:
    """Fault injected: step 5 returns NaN parameters and a NaN loss (as a diverged update would)."""
    import jax
    import jax.numpy as jnp

    real_build = trial.build_trainer

    def poisoned_build(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        calls = []

        def train_step(state, batch, key):
            state, metrics = trainer.train_step(state, batch, key)
            calls.append(1)
            if len(calls) == 5:
                state = {**state, "params": jax.tree.map(lambda p: p * jnp.nan, state["params"])}
                metrics = {**metrics, "loss_sum": jnp.float32(jnp.nan)}
            return state, metrics

        return dataclasses.replace(trainer, train_step=train_step)

    monkeypatch.setenv("SCALING_LAB_CACHE", str(lab_cache))
    monkeypatch.setattr(trial, "build_trainer", poisoned_build)
    workdir = tmp_path / "diverged"
    code = train_module.main(["--preset", "tiny", "--workdir", str(workdir), "--steps", "8", "--checkpoint-every", "2",
                              "--set", "train.keep_checkpoints=5", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1
    assert result == {"status": "failed", "reason": "non-finite loss at step 5", "failed_at_step": 5,
                      "last_good_checkpoint": 4}
    assert json.loads((workdir / "result.json").read_text()) == result
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]


def test_an_unwritable_workdir_is_one_line_and_status_2(tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert train_module.main(["--preset", "tiny", "--workdir", str(blocker / "trial")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --workdir {blocker / 'trial'}: cannot write there (Not a directory)"]


def test_the_best_validation_evaluation_is_kept_ties_to_the_earlier() -> None:
    from scaling.engine.selection import BestEvaluation

    best = BestEvaluation()
    assert best.to_state() is None and BestEvaluation.from_state(None).step is None
    best.offer(2, {"hr@10": 0.1}, {"hr@10": 0.3})
    best.offer(4, {"hr@10": 0.2}, {"hr@10": 0.1})
    best.offer(6, {"hr@10": 0.2}, {"hr@10": 0.5})  # a tie keeps step 4
    best.offer(8, {"hr@10": 0.15}, {"hr@10": 0.9})
    assert (best.step, best.test) == (4, {"hr@10": 0.1})
    restored = BestEvaluation.from_state(json.loads(json.dumps(best.to_state())))
    assert restored == best
