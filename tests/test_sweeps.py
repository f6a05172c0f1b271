"""Sweep specs expand as written; the runner skips done trials, records failures and goes on;
results.jsonl never holds a partial or duplicate line; status tells done/failed/pending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from etils import epath

from models.core.config import ModelConfig
from scaling.config import ConfigError, DataConfig, TrainConfig, TrialConfig
from scaling.services.tensorboard import read_scalars
from sweeps import runner
from sweeps.results import ResultsStore
from sweeps.spec import Sweep, axis, grid, isoflop, ladder, load_spec, planned_compute, train_flops_per_step, zipped
from tests.conftest import xla_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE = TrialConfig(data=DataConfig(max_len=20), model=ModelConfig(d_model=16, blocks=1, heads=1, max_positions=64),
                   train=TrainConfig(batch_size=8, steps=5))
SIZES = ladder("size", [{"model.d_model": 16, "model.blocks": 1}, {"model.d_model": 32, "model.blocks": 2}], ["s", "m"])


def test_a_tuned_grid_compiles_once_per_model_and_shape() -> None:
    from sweeps.plan import _step_shape

    trials = load_spec(REPO_ROOT / "sweeps" / "configs" / "ml100k_lr_transfer.py").trials()
    shapes = {_step_shape(trial) for trial in trials}
    models = {(t.config.model.d_model, t.config.model.parametrization) for t in trials}
    assert len(trials) == 40 and len(shapes) == len(models) == 8


def test_grid_zip_ladder_expand_to_distinct_trials() -> None:
    points = grid(SIZES, axis("seq_len", "data.max_len", [20, 40]))
    trials = Sweep("t", BASE, points).trials()
    assert [(t.labels["size"], t.labels["seq_len"]) for t in trials] == [("s", 20), ("s", 40), ("m", 20), ("m", 40)]
    assert [(t.config.model.d_model, t.config.model.blocks, t.config.data.max_len) for t in trials] == \
        [(16, 1, 20), (16, 1, 40), (32, 2, 20), (32, 2, 40)]
    assert len({t.trial_id for t in trials}) == 4
    paired = zipped(SIZES, axis("seed", "train.seed", [1, 2]))
    assert [(p.labels["size"], p.overrides["train.seed"]) for p in paired] == [("s", 1), ("m", 2)]
    with pytest.raises(ConfigError, match="different lengths"):
        zipped(SIZES, axis("seed", "train.seed", [1, 2, 3]))
    with pytest.raises(ConfigError, match="two axes both set model.d_model"):
        grid(SIZES, axis("width", "model.d_model", [8]))


def test_isoflop_gives_each_size_the_steps_that_spend_the_budget() -> None:
    points = isoflop([1e9, 4e9], SIZES, BASE, num_items=100)
    trials = Sweep("iso", BASE, points).trials()
    for trial in trials:
        spent = trial.config.train.steps * train_flops_per_step(trial.config, 100)
        assert spent == pytest.approx(trial.labels["budget"], rel=0.05)
    small, medium = trials[0].config.train.steps, trials[1].config.train.steps
    assert small > medium  # the smaller model gets more steps for the same budget


def test_isoflop_budget_of_a_ladder_run_gives_it_its_own_steps() -> None:
    for size in SIZES:
        budget = planned_compute(BASE, size, 100)
        longer = planned_compute(BASE, size.merge(axis("steps", "train.steps", [3 * BASE.train.steps])[0]), 100)
        assert longer == pytest.approx(3 * budget)
        (point,) = isoflop([budget], [size], BASE, 100)
        assert point.overrides["train.steps"] == BASE.train.steps


def test_local_trials_share_a_compilation_cache_unless_one_is_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path))
    env = runner.compilation_cache_env({"PATH": "/bin"})
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "xla") and env["PATH"] == "/bin"
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert runner.compilation_cache_env({"JAX_COMPILATION_CACHE_DIR": "/mine"})["JAX_COMPILATION_CACHE_DIR"] == "/mine"


def test_results_store_keeps_one_line_per_trial(tmp_path: Path) -> None:
    store = ResultsStore(epath.Path(tmp_path))
    store.record({"trial_id": "a", "status": "failed: x"})
    store.record({"trial_id": "b", "status": "ok", "eval_loss": 1.0})
    store.record({"trial_id": "a", "status": "ok", "eval_loss": 2.0})
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["trial_id"], r["status"]) for r in lines] == [("a", "ok"), ("b", "ok")]
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name]


def test_runner_skips_done_records_failures_and_goes_on(tmp_path: Path) -> None:
    sweep = Sweep("t", BASE, grid(SIZES, axis("seq_len", "data.max_len", [20, 40])))
    trials = sweep.trials()
    calls: list[str] = []

    def fake(trial):
        calls.append(trial.trial_id)
        if trial.labels["size"] == "m" and trial.labels["seq_len"] == 40:
            raise RuntimeError("boom")
        return {"status": "ok", "eval_loss": 1.0, "hr@10": 0.1}

    workdir = epath.Path(tmp_path)
    runner.run_trials(sweep, workdir, trials, parallel=2, run_one=fake)
    assert sorted(calls) == sorted(t.trial_id for t in trials)
    records = ResultsStore(workdir).load()
    assert records[trials[3].trial_id]["status"] == "failed: RuntimeError: boom"
    assert records[trials[0].trial_id]["size"] == "s" and records[trials[0].trial_id]["seq_len"] == 20
    states = runner.status_of(workdir, trials)
    assert sorted(states.values()) == ["done", "done", "done", "failed"]
    calls.clear()
    runner.run_trials(sweep, workdir, trials, parallel=1, run_one=fake)
    assert calls == [trials[3].trial_id]  # only the failed one runs again
    assert runner.status_of(workdir, Sweep("t2", BASE, []).trials())  # an empty sweep is one default trial
    assert runner.select(trials, "size=m*seq_len=20") == [trials[2]]


def test_bad_spec_files_fail_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "nothing.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no SWEEP"):
        load_spec(tmp_path / "nothing.py")
    (tmp_path / "typo.py").write_text(textwrap.dedent("""
        from sweeps.spec import Sweep, axis
        from scaling.config import TrialConfig
        SWEEP = Sweep("typo", TrialConfig(), axis("d", "model.widht", [8]))
    """))
    with pytest.raises(ConfigError, match=r"typo.py: sweep typo, trial d=8: unknown config key model.widht"):
        load_spec(tmp_path / "typo.py")
    with pytest.raises(ConfigError, match="no such sweep spec file"):
        load_spec(tmp_path / "missing.py")
    (tmp_path / "empty.py").write_text(textwrap.dedent("""
        from sweeps.spec import Sweep, axis, grid, ladder
        from scaling.config import TrialConfig
        SWEEP = Sweep("empty", TrialConfig(), grid(ladder("size", []), axis("lr", "train.learning_rate", [1e-3])))
    """))
    with pytest.raises(ConfigError, match=r"^.*empty.py: ladder size: no rungs"):
        load_spec(tmp_path / "empty.py")
    (tmp_path / "broken.py").write_text("import no_such_module_at_all\n")
    with pytest.raises(ConfigError, match="broken.py: ModuleNotFoundError: No module named 'no_such_module_at_all'"):
        load_spec(tmp_path / "broken.py")


@pytest.mark.slow(15)
def test_local_sweep_end_to_end(tmp_path: Path, lab_cache: Path, ml100k, monkeypatch, capsys) -> None:
    from sweeps import __main__ as sweeps_main

    spec = tmp_path / "tiny_sweep.py"
    spec.write_text(textwrap.dedent("""
        import dataclasses
        from scaling.presets import preset
        from sweeps.spec import Sweep, axis
        base = preset("tiny")
        base = dataclasses.replace(base, train=dataclasses.replace(base.train, steps=4, log_every=2))
        SWEEP = Sweep("tiny_sweep", base, axis("data", "data.name", ["ml-100k", "no-such-dataset"], ["ml", "bad"]))
    """))
    env = dict(os.environ, SCALING_LAB_CACHE=str(lab_cache), XLA_FLAGS=xla_flags(1))
    command = [sys.executable, "-m", "sweeps", "run", str(spec), "--workdir", str(tmp_path / "wd"), "--no-report", "--json"]
    first = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1, first.stderr  # one trial failed; the sweep went on
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (1, 1)
    records = {r["data"]: r for r in map(json.loads, (tmp_path / "wd" / "results.jsonl").read_text().splitlines())}
    assert records["ml"]["status"] == "ok" and records["ml"]["steps"] == 4
    assert records["bad"]["status"].startswith("failed: exit 2: error: no-such-dataset: no such file")
    assert first.stderr.strip().splitlines()[-1] == "sweep tiny_sweep: done 1/2, running 0, failed 1, pending 0"
    assert "\x1b" not in first.stderr  # not a terminal: plain lines
    events = list((tmp_path / "wd" / "trials" / records["ml"]["trial_id"] / "data=ml").glob("events.out.tfevents.*"))
    assert events and "learning/loss" in read_scalars(events[0].parent)  # tensorboard shows it under its labels
    monkeypatch.setenv("SCALING_LAB_CACHE", str(lab_cache))  # the driver again, and its status, in this process
    assert sweeps_main.main(command[3:]) == 1
    assert "1 already done, 1 to run" in capsys.readouterr().err
    assert sweeps_main.main(["status", str(spec), "--workdir", str(tmp_path / "wd"), "--json"]) == 1  # one failed
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (counts["done"], counts["failed"], counts["pending"]) == (1, 1, 0)


@pytest.mark.slow(15)
def test_show_plans_hbm_and_chip_hours_on_an_accelerator(tmp_path: Path) -> None:
    """Two sizes x two budgets: two compiled steps (a budget changes only the step count) on the 8
    simulated devices of a v5litepod-8; chip-hours are the planned FLOPs at the assumed MFU."""
    spec = tmp_path / "plan.py"
    spec.write_text(textwrap.dedent("""
        from models.core.config import ModelConfig
        from scaling.config import DataConfig, TrainConfig, TrialConfig
        from sweeps.spec import Sweep, isoflop, ladder
        BASE = TrialConfig(data=DataConfig(name="ml-20m", max_len=20),
                           model=ModelConfig(d_model=16, blocks=1, heads=1, max_positions=64),
                           train=TrainConfig(batch_size=8, negatives=8, eval_batch_size=8))
        SIZES = ladder("size", [{"model.d_model": 16}, {"model.d_model": 32}], ["s", "m"])
        SWEEP = Sweep("plan", BASE, isoflop([1e12, 3e12], SIZES, BASE, 70_000), num_items=70_000)
    """))
    run = lambda *flags: subprocess.run([sys.executable, "-m", "sweeps", "show", str(spec), *flags], cwd=REPO_ROOT,
                                        capture_output=True, text=True, timeout=300)
    done = run("--accelerator", "v5litepod-8", "--mfu", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    assert "compiling 2 distinct steps on 8 simulated devices" in done.stderr and "[2/2]" in done.stderr
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    trials, plan = shown["trials"], shown["plan"]
    assert [t["size"] for t in trials] == ["s", "m", "s", "m"] and plan["devices"] == 8
    assert trials[0]["hbm_bytes"] == trials[2]["hbm_bytes"] < trials[1]["hbm_bytes"] == trials[3]["hbm_bytes"]
    assert all(t["catalogue_tables"] == {"item_embedding": "P('data', None)"} and t["fits"] for t in trials)
    for trial in trials:
        assert trial["chip_hours"] == pytest.approx(trial["flops_max"] / (197e12 * 0.5) / 3600)
    assert plan["chip_hours"] == pytest.approx(sum(t["chip_hours"] for t in trials))
    assert plan["trials_over_hbm"] == 0 and plan["hbm_bytes_per_device"] == 16e9
    bad = run("--accelerator", "v5p-3")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --accelerator: accelerator 'v5p-3'")
