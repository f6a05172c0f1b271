"""`python -m analysis`: fit scaling laws with bootstrap intervals, draw them, write a sweep report.

  fit     one law (power, loglinear, chinchilla, isoflop, frontier) to a CSV or a results.jsonl
  plot    one figure of a fitted law (PNG + SVG)
  report  every fit and figure the results support, as Markdown + HTML
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from analysis import records
from analysis.errors import FitError
from analysis.run import FORMS, Columns, FitOptions, TableFit, fit_table


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _table(args: argparse.Namespace) -> pd.DataFrame:
    table = records.load_table(args.csv or args.results, note=_log)
    if args.drop_highest_loss:
        column = args.loss_col or args.y_col or records.pick_column(table, None, records.LOSS_COLUMNS, "loss")
        table = records.drop_highest(table, column, args.drop_highest_loss)
        _log(f"dropped the {args.drop_highest_loss} highest-{column} row(s); {len(table)} left")
    return table


def _fit(args: argparse.Namespace) -> TableFit:
    if args.bootstrap < 0:
        raise FitError(f"--bootstrap must be >= 0, not {args.bootstrap}")
    if args.holdout < 0:
        raise FitError(f"--holdout must be >= 0, not {args.holdout}")
    if not 0 < args.ci_level < 1:
        raise FitError(f"--ci-level must lie in (0, 1), not {args.ci_level}")
    table = _table(args)
    columns = Columns(x=args.x_col, y=args.y_col, n=args.n_col, d=args.d_col, c=args.c_col, loss=args.loss_col,
                      budget=args.budget_col)
    options = FitOptions(bootstrap=args.bootstrap, seed=args.seed, ci_level=args.ci_level, direction=args.direction,
                         budget_tolerance=args.budget_tolerance, holdout=args.holdout)
    started = time.perf_counter()
    _log(f"fitting {args.form} to {len(table)} row(s) of {records.source(table)} "
         f"({args.bootstrap} bootstrap resamples) ...")
    fitted = fit_table(table, args.form, columns, options, progress=_log)
    fitted.result.extra["seconds"] = round(time.perf_counter() - started, 3)
    _log(f"done in {fitted.result.extra['seconds']:.1f}s")
    return fitted


def _run_fit(args: argparse.Namespace) -> dict:
    fitted = _fit(args)
    out = fitted.result.to_json()
    out["source"] = str(args.csv or args.results)
    return out


def _run_plot(args: argparse.Namespace) -> dict:
    from analysis import chinchilla, frontier, loglinear, plots, power

    fitted = _fit(args)
    result, data, used = fitted.result, fitted.data, fitted.columns
    stem = Path(args.out) / (args.name or f"{args.form}")
    paths: list[Path] = []
    if args.form == "power":
        direction = result.extra["direction"]
        paths += plots.fitted_curve(data["x"], data["y"], result, lambda p, x: power.predict(p, x, direction),
                                    stem, used["x"], used["y"], log_y=direction == "falling")
        paths += plots.residuals(data["x"], data["y"], power.predict(result.params, data["x"], direction),
                                 f"{stem}_residuals", used["x"], "Power-law residuals")
    elif args.form == "loglinear":
        paths += plots.fitted_curve(data["x"], data["y"], result, loglinear.predict, stem, used["x"], used["y"], log_y=False)
        paths += plots.residuals(data["x"], data["y"], loglinear.predict(result.params, data["x"]),
                                 f"{stem}_residuals", used["x"], "Log-linear residuals")
    elif args.form == "chinchilla":
        paths += plots.chinchilla_allocation(data["n"], data["d"], data["loss"], result, stem)
        paths += plots.residuals(data["c"], data["loss"], chinchilla.predict_loss(result.params, data["n"], data["d"]),
                                 f"{stem}_residuals", "train_flops", "Joint-law residuals")
    elif args.form == "isoflop":
        paths += plots.isoflop_curves(data["n"], data["loss"], data["c"], data["budget"], result, stem)
    else:
        on_front = frontier.lower_envelope(data["c"], data["loss"])
        paths += plots.loss_vs_compute(data["c"], data["loss"], on_front, result, stem, used["c"], used["loss"])
        paths += plots.residuals(data["c"][on_front], data["loss"][on_front],
                                 power.predict(result.params, data["c"][on_front]), f"{stem}_residuals",
                                 used["c"], "Frontier-law residuals")
    for path in paths:
        _log(f"wrote {path}")
    return {**result.to_json(), "figures": [str(p) for p in paths]}


def _run_report(args: argparse.Namespace) -> dict:
    from analysis.report import ReportOptions, build_report

    if args.bootstrap < 0:
        raise FitError(f"--bootstrap must be >= 0, not {args.bootstrap}")
    started = time.perf_counter()
    options = ReportOptions(metric=args.metric, bootstrap=args.bootstrap, seed=args.seed, holdout=args.holdout,
                            columns=Columns(n=args.n_col, d=args.d_col, c=args.c_col, loss=args.loss_col))
    report = build_report(args.results, args.out, options, progress=_log)
    for reason in report.skipped:
        _log(f"skipped: {reason}")
    out = Path(args.out)
    _log(f"wrote {out / 'report.md'}, {out / 'report.html'} and {len(report.figures)} figure file(s) "
         f"in {time.perf_counter() - started:.1f}s")
    return {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
            "figures": [str(p) for p in report.figures], "skipped": report.skipped, "fits": report.fits}


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True, allow_nan=False))
        return
    ci = result.get("ci", {})
    for key, value in result.items():
        if key in ("ci", "se", "fits", "budgets", "log_params"):
            continue
        if isinstance(value, float):
            interval = f"  [{ci[key][0]:.6g}, {ci[key][1]:.6g}]" if key in ci and None not in ci[key] else ""
            print(f"{key:<24} {value:.6g}{interval}")
        elif isinstance(value, (list, dict)):
            print(f"{key:<24} {json.dumps(value)[:200]}")
        else:
            print(f"{key:<24} {value}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, run: Callable[[argparse.Namespace], dict], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    def fit_arguments(sub: argparse.ArgumentParser) -> None:
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--csv", help="a CSV file, one run per row")
        source.add_argument("--results", help="a sweep's results.jsonl (records whose status is not ok are skipped)")
        sub.add_argument("--form", choices=FORMS, required=True, help="the law to fit")
        sub.add_argument("--x-col", help="power/loglinear: x column (default: train_flops)")
        sub.add_argument("--y-col", help="power/loglinear: y column (default: the loss column)")
        sub.add_argument("--n-col", help="parameters N (default: params_non_embedding, then params)")
        sub.add_argument("--d-col", help="tokens D (default: tokens; D = C / (6 N) when only C is given)")
        sub.add_argument("--c-col", help="training compute C in FLOP (default: train_flops)")
        sub.add_argument("--loss-col", help="loss column (default: eval_loss, then loss)")
        sub.add_argument("--drop-highest-loss", type=int, default=0, metavar="K",
                         help="drop the K rows of highest loss first (the Chinchilla replication drops 5)")
        sub.add_argument("--direction", choices=["auto", "falling", "rising"], default="auto",
                         help="power law: E + A x^-alpha (falling) or E - A x^-alpha (rising); auto from the trend")
        sub.add_argument("--budget-col", help="isoflop: column naming each run's compute budget "
                         "(default: group runs by --budget-tolerance)")
        sub.add_argument("--budget-tolerance", type=float, default=0.1, metavar="DECADES",
                         help="isoflop: runs within this many decades of compute form one budget")
        sub.add_argument("--holdout", type=int, default=0, metavar="K",
                         help="also refit without the K largest-compute runs and report the forecast error on them")
        sub.add_argument("--bootstrap", type=int, default=100, metavar="B", help="bootstrap resamples (0: no intervals)")
        sub.add_argument("--ci-level", type=float, default=0.95, help="confidence level of the percentile intervals")
        sub.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
        sub.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")

    fit_arguments(add("fit", _run_fit, "fit one law; parameters, bootstrap intervals, goodness of fit"))
    plot = add("plot", _run_plot, "fit one law and draw it with its data, band and residuals (PNG + SVG)")
    fit_arguments(plot)
    plot.add_argument("--out", default="figures", help="output folder (default: figures)")
    plot.add_argument("--name", help="file name stem (default: the form)")
    report = add("report", _run_report, "every fit and figure a results file supports, as Markdown + HTML")
    report.add_argument("results", help="a sweep's results.jsonl (or a CSV of runs)")
    report.add_argument("--out", required=True, help="output folder for report.md, report.html, figures/")
    report.add_argument("--metric", default="hr@10", help="ranking metric to plot and fit (default: hr@10)")
    report.add_argument("--n-col", help="parameters N (default: params_non_embedding, then params)")
    report.add_argument("--d-col", help="tokens D (default: tokens)")
    report.add_argument("--c-col", help="training compute C (default: train_flops)")
    report.add_argument("--loss-col", help="loss column (default: eval_loss)")
    report.add_argument("--holdout", type=int, default=1, metavar="K", help="largest-compute runs held out for forecasts")
    report.add_argument("--bootstrap", type=int, default=100, metavar="B", help="bootstrap resamples per fit")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    np.seterr(all="ignore")  # overflow in far-off line-search trials is expected and handled
    try:
        result = args.run(args)
    except FitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an output folder that cannot be written
        print(f"error: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return 2
    _print(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
