"""Tuned envelopes: tuned() gives each point a learning-rate grid; the report keeps each point's
best run by validation loss, fits the laws on those beside the untuned runs', and shows where the
optimum lies per size and how far it moves."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from analysis.__main__ import main
from models.core.config import ModelConfig
from scaling.config import ConfigError, DataConfig, TrainConfig, TrialConfig
from sweeps.runner import make_record
from sweeps.spec import Sweep, axis, grid, ladder, tuned

LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
WIDTHS = [32, 64, 128, 256, 512]


def test_tuned_gives_every_point_the_grid_and_marks_the_untuned_run() -> None:
    base = TrialConfig(data=DataConfig(split="holdout"), model=ModelConfig(d_model=32), train=TrainConfig(learning_rate=1e-2))
    sizes = ladder("size", [{"model.d_model": w} for w in WIDTHS[:2]], ["d32", "d64"])
    points = tuned(grid(sizes, axis("parametrization", "model.parametrization", ["standard", "mup"])), learning_rates=LRS)
    with pytest.raises(ConfigError, match="under data.split=reference the validation target is trained on"):
        Sweep("t", dataclasses.replace(base, data=DataConfig()), points).trials()
    sweep = Sweep("t", base, points)
    trials = sweep.trials()
    assert len(trials) == 2 * 2 * len(LRS) and all(t.tuning == ("lr",) for t in trials)
    assert [t.labels["lr"] for t in trials if t.tuning_default] == [1e-2] * 4
    record = make_record(sweep, trials[0], {"status": "ok"})
    assert record["tuned"] == "lr" and record["labels"] == "size,parametrization,lr" and record["lr"] == LRS[0]


def synthetic_grid() -> list[dict]:
    """Loss = floor(N) + (log10(lr / lr*))^2 / 4: lr* falls by half a decade per 4x width in the
    standard parametrization and stays at 1e-2 under µP; the base config's rate is 1e-2."""
    records = []
    for parametrization in ("standard", "mup"):
        for index, width in enumerate(WIDTHS):
            params = 12 * width * width
            best = 1e-2 * (10 ** (-0.25 * index) if parametrization == "standard" else 1.0)
            for lr in LRS:
                tokens = 1e6
                loss = 3.0 + 40.0 * params ** -0.3 + (math.log10(lr / best)) ** 2 / 4
                records.append({"trial_id": f"{parametrization}-{width}-{lr}", "status": "ok", "size": f"d{width}",
                                "parametrization": parametrization, "lr": lr, "labels": "size,parametrization,lr",
                                "tuned": "lr", "tuning_default": lr == 1e-2, "params": params + 1000,
                                "params_non_embedding": params, "max_len": 50, "tokens": tokens,
                                "train_flops": 6.0 * params * tokens, "eval_loss": loss, "hr@10": 0.1, "mfu": 0.1,
                                "final_train_loss": 2.0 + (math.log10(lr / 3e-3)) ** 2})  # optimum 3e-3 throughout
    return records


@pytest.mark.slow
def test_the_report_keeps_each_points_best_run_and_shows_the_optimum_moving(tmp_path, capsys) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in synthetic_grid()))
    assert main(["report", str(results), "--out", str(tmp_path / "report"), "--bootstrap", "5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    optima = summary["fits"]["tuning"]
    standard, mup = optima["parametrization=standard"], optima["parametrization=mup"]
    assert [standard[f"d{w}"]["grid_index"] for w in WIDTHS] == [2, 2, 1, 1, 0]  # the rate falls with width
    assert {mup[f"d{w}"]["grid_index"] for w in WIDTHS} == {2}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "parametrization=standard: the optimum moves 2 grid step(s) across 5 size(s)." in markdown
    assert "parametrization=mup: the optimum moves 0 grid step(s) across 5 size(s)." in markdown
    assert "parametrization=standard, by final training loss: the optimum moves 0 grid step(s)" in markdown
    by_train = summary["fits"]["tuning_by_final_train_loss"]["parametrization=standard"]
    assert {by_train[f"d{w}"]["best"] for w in WIDTHS} == {"lr=0.003"}
    runs = markdown.split("## Runs")[1].split("## ")[0]
    assert runs.count("| standard-") + runs.count("| mup-") == 10  # one run per point: its best
    assert "| frontier L(C), untuned (base learning rate) |" in markdown
    assert "frontier_untuned" in summary["fits"] and "loss_vs_lr_1.png" in " ".join(summary["figures"])
