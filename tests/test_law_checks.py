"""benchmarks/law_checks: each check of a sweep's laws against the generator's floor passes, fails or is
"not checked" exactly as its inputs say."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks import law_checks

FLOOR = {"value": 4.0, "stderr": 0.01, "kind": "Bayes", "oracle": 3.8, "highest": 4.0}


def _law(e: float, ci: list[float] | None, forecast_error: float | None = None) -> dict:
    fit = {"form": "x", "E": e, "ci": {"E": ci} if ci else {},
           "floor": {**FLOOR, "E_minus_floor": e - 4.0, "interval_holds_floor": None if ci is None else ci[0] <= 4.0 <= ci[1],
                     "floor_not_above_interval": None if ci is None else 4.0 <= ci[1]}}
    if forecast_error is not None:
        fit["holdout"] = {"compute": [1e12], "observed": [4.5], "predicted": [4.5 * (1 + forecast_error)],
                          "relative_error": [forecast_error]}
    return fit


GOOD = {"floor": FLOOR, "frontier": _law(4.1, [3.9, 4.3], 0.01), "chinchilla": _law(4.05, [3.95, 4.2], -0.015),
        "isoflop": {"form": "isoflop", "a_opt": 0.5},
        "hr@10_loglinear": {"form": "loglinear", "holdout": {"compute": [1e12], "observed": [0.1], "predicted": [0.2],
                                                             "relative_error": [1.0]}},  # not a loss: not checked
        "allocation_agreement": {"budgets": [], "a_opt_isoflop": 0.5, "a_opt_isoflop_ci": [0.4, 0.6],
                                 "a_opt_joint": 0.55, "a_opt_joint_ci": [0.5, 0.6], "intervals_overlap": True}}


def test_a_law_set_that_meets_every_check_passes_and_each_defect_fails_its_own_check():
    verdicts = law_checks.check(GOOD)["verdicts"]
    assert set(verdicts.values()) == {"pass"}
    below = copy.deepcopy(GOOD)
    below["frontier"] = _law(3.7, [3.6, 3.8])  # an E whose whole interval is under the floor
    far = copy.deepcopy(GOOD)
    far["chinchilla"] = _law(4.3, [4.1, 4.5])  # 7.5% above: the 5% check and the 2% goal fail
    near = copy.deepcopy(GOOD)
    near["chinchilla"] = _law(4.12, [4.0, 4.3])  # 3%: within 5%, not the 2% goal
    missed = copy.deepcopy(GOOD)
    missed["frontier"] = _law(4.1, [3.9, 4.3], 0.03)
    apart = copy.deepcopy(GOOD)
    apart["allocation_agreement"]["intervals_overlap"] = False
    failed = {name: {check for check, verdict in law_checks.check(fits)["verdicts"].items() if verdict != "pass"}
              for name, fits in {"below": below, "far": far, "near": near, "missed": missed, "apart": apart}.items()}
    assert failed == {"below": {"every E at or above the floor within its interval"},
                      "far": {"joint law's E within 5% of the floor", "joint law's E within 2% of the floor (goal)"},
                      "near": {"joint law's E within 2% of the floor (goal)"},
                      "missed": {"held-out forecasts within 2%"},
                      "apart": {"IsoFLOP and joint-law N_opt(C) exponents agree (intervals overlap)"}}


def test_a_check_without_its_inputs_is_not_checked_never_passed():
    bare = copy.deepcopy(GOOD)
    bare["frontier"] = _law(4.1, None)  # no interval
    del bare["allocation_agreement"], bare["chinchilla"]
    verdicts = law_checks.check(bare)["verdicts"]
    assert verdicts["every E at or above the floor within its interval"] == "not checked"
    assert verdicts["joint law's E within 5% of the floor"] == "not checked"
    assert verdicts["IsoFLOP and joint-law N_opt(C) exponents agree (intervals overlap)"] == "not checked"


def test_command_writes_the_page_and_json_and_turns_bad_input_into_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "fits.json").write_text(json.dumps(GOOD))
    assert law_checks.main([str(tmp_path), "--out", str(tmp_path / "checks.md"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["verdicts"] == law_checks.check(GOOD)["verdicts"]
    page = (tmp_path / "checks.md").read_text()
    assert "| chinchilla | 4.05 | [3.95, 4.2] | 4 | +0.05 | +1.25% | yes | yes |" in page
    assert "| frontier | 1e+12 | 4.5 | 4.545 | +1.00% |" in page
    (tmp_path / "fits.json").write_text(json.dumps({"frontier": GOOD["frontier"]}))
    assert law_checks.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fits.json" in err[0] and "no generator floor" in err[0]
    assert law_checks.main([str(tmp_path / "missing")]) == 2
