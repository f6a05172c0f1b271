"""The planted floor end to end, scaled down (issue 32): a sweep on the synthetic generator ->
results.jsonl -> report. No run beats the reachable (Bayes) floor of the events it is evaluated on,
the floor is of exactly those events, and no fitted E has an interval entirely below it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from analysis.report import ReportOptions, build_report
from data.dataset import prepare
from data.floors import loss_floors
from data.split import leave_one_out
from tests.conftest import xla_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = "synthetic:users=10000,items=40,topics=4,memory=0,mean_events=20,seed=0"
SPEC = textwrap.dedent(f"""
    from models.core.config import ModelConfig
    from scaling.config import DataConfig, TrainConfig, TrialConfig
    from sweeps.spec import Sweep, ladder

    BASE = TrialConfig(
        data=DataConfig(name="{SOURCE}", max_len=20, packed=True, split="holdout"),
        model=ModelConfig(family="hstu", max_positions=32, dropout=0.0, input_dropout=0.0),
        train=TrainConfig(batch_size=32, steps=300, learning_rate=1e-2, schedule="cosine", warmup_steps=10,
                          loss="full_softmax", log_every=100, eval_batch_size=1000, eval_points=3),
    )
    SWEEP = Sweep("planted_small", base=BASE, points=ladder("size", [
        {{"model.d_model": 4, "model.blocks": 1, "model.heads": 1}},
        {{"model.d_model": 8, "model.blocks": 1, "model.heads": 1}},
        {{"model.d_model": 16, "model.blocks": 1, "model.heads": 1}},
        {{"model.d_model": 32, "model.blocks": 1, "model.heads": 1}},
    ], ["d4", "d8", "d16", "d32"]))
""")


@pytest.mark.slow(40)
def test_no_run_or_law_goes_below_the_reachable_floor(tmp_path: Path, lab_cache: Path) -> None:
    spec = tmp_path / "planted_small.py"
    spec.write_text(SPEC)
    env = dict(os.environ, SCALING_LAB_CACHE=str(lab_cache), XLA_FLAGS=xla_flags(1))
    done = subprocess.run([sys.executable, "-m", "sweeps", "run", str(spec), "--workdir", str(tmp_path / "wd"),
                           "--no-report", "--parallel", "2", "--json"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    results = tmp_path / "wd" / "results.jsonl"
    runs = [json.loads(line) for line in results.read_text().splitlines()]

    split = leave_one_out(prepare(SOURCE, use_cache=False).sequences, "holdout")
    expected = loss_floors(SOURCE, {"": split.valid, "test_": split.test}, 20)
    for run in runs:  # the floor of exactly the events evaluated: every user's validation target, window 20
        assert run["floor_events"] == len(split.valid) == 10_000
        assert {key: run[key] for key in expected} == pytest.approx(expected, rel=1e-12)
        margin = 3 * run["floor_bayes_stderr"]
        assert run["eval_loss"] > run["floor_bayes"] - margin, run["size"]
        assert run["test_loss"] > run["test_floor_bayes"] - 3 * run["test_floor_bayes_stderr"], run["size"]
    best = min(run["eval_loss"] for run in runs)
    assert best < 1.03 * runs[0]["floor_bayes"]  # the runs come within 1-4% of the floor: the check has teeth

    report = build_report(results, tmp_path / "report", ReportOptions(bootstrap=20))
    compared = {name: fit["floor"] for name, fit in report.fits.items() if isinstance(fit, dict) and "floor" in fit}
    assert {"frontier", "frontier_whole_curves", "L(N) at max_len=20"} <= set(compared)
    for name, checked in compared.items():
        assert checked["kind"] == "Bayes" and checked["value"] == pytest.approx(expected["floor_bayes"])
        assert checked["floor_not_above_interval"], (name, checked)
