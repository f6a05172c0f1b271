"""`python -m benchmarks.law_checks REPORT_DIR`: a sweep's fitted laws checked against the generator's
known irreducible loss (issue 32), from the report's fits.json.

  python -m sweeps run sweeps/configs/synthetic_planted.py --parallel 2
  python -m benchmarks.law_checks workdirs/synthetic_planted/report [--out checks.md] [--json]

The checks:
- every fitted E is at or above the reachable floor within its interval (no model beats the floor);
- the joint law's E is within 5% of the floor (goal 2%);
- each law of the loss refitted without its largest-compute run(s) predicts them within 2%;
- the IsoFLOP minima and the joint law's allocation agree: the two N_opt(C) exponents' intervals overlap.
A check whose inputs the report lacks (no interval, no forecast) is "not checked", never passed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

JOINT_TOLERANCE, JOINT_GOAL = 0.05, 0.02
FORECAST_TOLERANCE = 0.02
JOINT = "chinchilla"


def _verdict(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "not checked"}[ok]


def _all(values: list[bool | None]) -> bool | None:
    """False if any is False; else None if there are none or any is None; else True."""
    if any(v is False for v in values):
        return False
    return None if not values or any(v is None for v in values) else True


def _interval(ci: Any) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci and None not in ci else "none"


def check(fits: dict[str, Any]) -> dict[str, Any]:
    """The rows and verdicts of every check, from a report's fits (fits.json)."""
    floor = fits.get("floor")
    if floor is None:
        raise ValueError("the report has no generator floor (fits.json has no 'floor'): not a synthetic source")
    laws = {name: fit for name, fit in fits.items() if isinstance(fit, dict) and "floor" in fit and "E" in fit}
    e_rows = [{"law": name, "E": fit["E"], "ci": fit.get("ci", {}).get("E"),
               "E_minus_floor": fit["floor"]["E_minus_floor"],
               "relative": fit["floor"]["E_minus_floor"] / fit["floor"]["value"],
               "floor": fit["floor"]["value"], "floor_stderr": fit["floor"]["stderr"],
               "oracle": fit["floor"]["oracle"],
               "floor_not_above_interval": fit["floor"]["floor_not_above_interval"],
               "interval_holds_floor": fit["floor"]["interval_holds_floor"]} for name, fit in laws.items()]
    forecasts = [{"law": name, "compute": c, "observed": o, "predicted": p, "error": e}
                 for name, fit in laws.items() if isinstance(fit.get("holdout"), dict)  # laws of the loss
                 for c, o, p, e in zip(fit["holdout"]["compute"], fit["holdout"]["observed"],
                                       fit["holdout"]["predicted"], fit["holdout"]["relative_error"])]
    joint = next((row for row in e_rows if row["law"] == JOINT), None)
    agreement = fits.get("allocation_agreement")
    verdicts = {
        "every E at or above the floor within its interval": _all([r["floor_not_above_interval"] for r in e_rows]),
        f"joint law's E within {JOINT_TOLERANCE:.0%} of the floor":
            None if joint is None else abs(joint["relative"]) <= JOINT_TOLERANCE,
        f"joint law's E within {JOINT_GOAL:.0%} of the floor (goal)":
            None if joint is None else abs(joint["relative"]) <= JOINT_GOAL,
        f"held-out forecasts within {FORECAST_TOLERANCE:.0%}":
            _all([abs(r["error"]) <= FORECAST_TOLERANCE for r in forecasts]),
        "IsoFLOP and joint-law N_opt(C) exponents agree (intervals overlap)":
            None if agreement is None else agreement["intervals_overlap"],
    }
    return {"floor": floor, "E": e_rows, "forecasts": forecasts, "allocation": agreement,
            "verdicts": {name: _verdict(ok) for name, ok in verdicts.items()}}


def markdown(checked: dict[str, Any]) -> str:
    floor = checked["floor"]
    lines = [f"Reachable floor ({floor['kind']}): {floor['value']:.4g} ± {floor['stderr']:.2g} nats; "
             f"oracle floor (taste known): {floor['oracle']:.4g}.", "",
             "| law | E | 95% CI | floor | E − floor | (E − floor) / floor | floor ≤ CI top | CI holds floor |",
             "|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "NO", None: "–"}
    for row in checked["E"]:
        lines.append(f"| {row['law']} | {row['E']:.4g} | {_interval(row['ci'])} | {row['floor']:.4g} | "
                     f"{row['E_minus_floor']:+.4g} | {100 * row['relative']:+.2f}% | "
                     f"{yes[row['floor_not_above_interval']]} | {yes[row['interval_holds_floor']]} |")
    if checked["forecasts"]:
        lines += ["", "| law | held-out compute (FLOP) | observed | predicted | error |", "|---|---|---|---|---|"]
        lines += [f"| {r['law']} | {r['compute']:.3g} | {r['observed']:.4g} | {r['predicted']:.4g} | "
                  f"{100 * r['error']:+.2f}% |" for r in checked["forecasts"]]
    if (agreement := checked["allocation"]) is not None:
        lines += ["", f"N_opt ∝ C^a: IsoFLOP a = {agreement['a_opt_isoflop']:.3g} "
                      f"{_interval(agreement['a_opt_isoflop_ci'])}, joint law a = {agreement['a_opt_joint']:.3g} "
                      f"{_interval(agreement['a_opt_joint_ci'])}."]
    lines += ["", "| check | verdict |", "|---|---|"]
    lines += [f"| {name} | {verdict} |" for name, verdict in checked["verdicts"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.law_checks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="a report folder (holding fits.json) or a fits.json")
    parser.add_argument("--out", type=Path, help="write the checks as markdown here")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    path = args.report / "fits.json" if args.report.is_dir() else args.report
    try:
        fits = json.loads(path.read_text())
        checked = check(fits)
    except (OSError, json.JSONDecodeError, ValueError, KeyError, TypeError) as error:
        print(f"error: {path}: {error!s}", file=sys.stderr)
        return 2
    text = markdown(checked)
    if args.out:
        args.out.write_text(text)
    print(json.dumps(checked, sort_keys=True) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
