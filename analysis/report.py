"""A sweep report: fits, tables and figures from a results file, as Markdown, HTML and fits.json in one folder.

Every section is attempted; one whose columns are missing or whose data cannot support the fit
says why where it stands, and is listed again under "Skipped", instead of failing the report. The
HTML page opens from its folder (figures beside it, linked by relative paths); wide tables scroll
inside the page.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from analysis import allocation, curves, floors, frontier, isoflop, loglinear, plots, records
from analysis import tuning as tuning_module
from analysis.errors import FitError
from analysis.floors import Floor
from analysis.render import Report, render_html, render_markdown
from analysis.result import FitResult
from analysis.run import Columns, FitOptions, fit_table, resolve_n_d_c

RUN_COLUMNS = ("trial_id", "model", "params", "params_non_embedding", "max_len", "seq_len", "d_model", "blocks",
               "tokens", "train_flops", "wall_seconds", "mfu", "final_train_loss", "eval_loss", "hr@10", "ndcg@10", "mrr")
FIGURES = "figures"
FLOOR_HEADER = ["irreducible loss (generator)", "E − floor", "interval holds floor", "floor ≤ interval top"]
_FLOOR_CAPTION = ("; dash-dotted: the generator's irreducible loss on the evaluated events (the best a sequence "
                  "model can reach), dotted: the oracle's (it knows each user's taste).")


@dataclass(frozen=True)
class ReportOptions:
    metric: str = "hr@10"
    bootstrap: int = 100
    seed: int = 0
    holdout: int = 1
    columns: Columns = Columns()


def _fmt(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        return f"{value:.4g}"
    return str(value)


def _complete(table: pd.DataFrame, needed: list[str], what: str, report: Report) -> pd.DataFrame | None:
    """Rows of `table` with a number in every `needed` column, or None (noted as skipped) if a column is missing."""
    missing = [name for name in needed if name not in table.columns]
    if missing:
        report.skip(what, f"column(s) {', '.join(map(repr, missing))} missing from the results")
        return None
    values = table[needed].apply(pd.to_numeric, errors="coerce")
    keep = values.notna().all(axis=1).to_numpy()
    if not keep.all():
        report.text(f"{what}: {int((~keep).sum())} run(s) without a value in {', '.join(needed)} left out.")
    if not keep.any():
        report.skip(what, f"no run has a value in every one of {', '.join(needed)}")
        return None
    subset = table[keep].reset_index(drop=True)
    subset.attrs.update(table.attrs)
    return subset


def _fit_rows(name: str, fit: FitResult, target: str, floor: Floor | None = None) -> list[list[str]]:
    """A row per parameter; the E row of a law fitted to a loss with a known floor also gives the
    floor, E - floor and whether E's interval holds the floor (blank cells otherwise)."""
    rows = []
    for param, value in fit.params.items():
        interval = fit.ci.get(param)
        cells = ["", "", "", ""]
        if param == "E" and floor is not None:
            holds, not_above = floor.covered_by(interval), floor.not_above(interval)
            cells = [f"{floor.value:.4g} ± {floor.stderr:.2g} ({floor.kind})", _fmt(value - floor.value),
                     {True: "yes", False: "NO", None: "–"}[holds], {True: "yes", False: "NO", None: "–"}[not_above]]
        rows.append([name, target, param, _fmt(value), f"[{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else "–",
                     str(fit.n_points), _fmt(fit.goodness.get("r2", fit.goodness.get("r2_log", float("nan")))),
                     _fmt(fit.goodness.get("rmse_log", float("nan")))] + cells)
    return rows


def _fit_json(fit: FitResult, floor: Floor | None = None) -> dict:
    """fit.to_json(), with the floor its E is compared with (and how) when there is one."""
    out = fit.to_json()
    if floor is not None and "E" in fit.params:
        interval = fit.ci.get("E")
        out["floor"] = {**floor.to_json(), "E_minus_floor": fit.params["E"] - floor.value,
                        "interval_holds_floor": floor.covered_by(interval),
                        "floor_not_above_interval": floor.not_above(interval)}
    return out


def _interval(ci: list[float] | None) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "no interval"


def _allocation_agreement(report: Report, agreement: dict) -> None:
    """The IsoFLOP minima beside the joint law's N_opt(C), budget by budget, and the two exponents."""
    report.fits["allocation_agreement"] = agreement
    report.text("N_opt(C) by both routes: each budget's IsoFLOP minimum beside the joint law's compute-optimal "
                "N at that compute.")
    report.table(["budget C (FLOP)", "IsoFLOP N*", "joint law N_opt(C)", "ratio"],
                 [[_fmt(b["compute"]), _fmt(b["isoflop_n_opt"]), _fmt(b["joint_n_opt"]), f"{b['ratio']:.3g}"]
                  for b in agreement["budgets"]])
    overlap = {True: "overlap", False: "do NOT overlap", None: "cannot be compared (an interval is missing)"}
    report.text(f"Exponent a of N_opt ∝ C^a: IsoFLOP {agreement['a_opt_isoflop']:.3g} "
                f"{_interval(agreement['a_opt_isoflop_ci'])}, joint law {agreement['a_opt_joint']:.3g} "
                f"{_interval(agreement['a_opt_joint_ci'])}; the intervals "
                f"{overlap[agreement['intervals_overlap']]}.")


def _attempt(report: Report, what: str, step: Callable[[], None]) -> None:
    try:
        step()
    except FitError as error:
        report.skip(what, str(error))


@dataclass
class Sweep:
    """What the sections read (the results, the chosen columns, the floor) and add to (the report,
    the laws fitted so far, the rows of the fitted-laws and held-out tables)."""
    results: Path
    out: Path
    options: ReportOptions
    say: Callable[[str], None]
    report: Report
    table: pd.DataFrame
    tuned: "tuning_module.Tuning | None"
    loss_col: str | None  # None: no loss or compute column; `no_columns` says why
    compute_col: str | None
    no_columns: str
    size_col: str
    seq_col: str
    floor: Floor | None
    compute_params: tuple | None  # (the N of C = 6 N D, its ratios) when the results hold several counts
    laws: dict[str, FitResult] = field(default_factory=dict)  # fitted by one section, drawn again by a later one
    fit_rows: list[list[str]] = field(default_factory=list)
    holdout_rows: list[list[str]] = field(default_factory=list)

    @property
    def figures(self) -> Path:
        return self.out / FIGURES

    @property
    def cols(self) -> Columns:
        return self.options.columns

    @property
    def compute_n(self) -> str | None:
        """N of C = 6 N D (the joint law, IsoFLOP)."""
        return self.cols.n or (self.compute_params[0] if self.compute_params else None)

    def fit_options(self, holdout: int = 0) -> FitOptions:
        return FitOptions(bootstrap=self.options.bootstrap, seed=self.options.seed, holdout=holdout)

    def figure(self, paths: list[Path], caption: str) -> None:
        self.report.figure(paths, caption, self.out)


def build_report(results: str | Path, out: str | Path, options: ReportOptions = ReportOptions(),
                 progress: Callable[[str], None] | None = None) -> Report:
    """Write `out`/report.md, `out`/report.html, `out`/fits.json (every fitted law, as the `--json` summary
    gives it) and `out`/figures/*.{png,svg} from a results file, section by section (SECTIONS)."""
    out = Path(out)
    (out / FIGURES).mkdir(parents=True, exist_ok=True)
    sweep = _read_sweep(Path(results), out, options, progress or (lambda message: None))
    for section in SECTIONS:
        section(sweep)
    report = sweep.report
    (out / "report.md").write_text(render_markdown(report))
    (out / "report.html").write_text(render_html(report, title=f"Scaling report: {Path(results).name}"))
    (out / "fits.json").write_text(json.dumps(report.fits, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return report


def _read_sweep(results: Path, out: Path, options: ReportOptions, say: Callable[[str], None]) -> Sweep:
    """The results as a table (a tuned sweep's envelope in place of its grid), the source paragraph,
    and the columns the sections use."""
    report = Report()
    notes: list[str] = []
    table = records.load_table(results, note=lambda m: (notes.append(m), say(m)))
    report.text(f"Source: `{results}`, {len(table)} run(s) with status ok. "
                f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by "
                f"`python -m analysis report`; {options.bootstrap} bootstrap resamples, 95% percentile intervals.")
    for note in notes:
        report.text(note)
    cols = options.columns
    tuned = _tuning(table, cols)
    if tuned is not None:  # the envelope stands for each point from here on; the grid has its own section
        table = tuned.envelope
        report.text(f"Tuned sweep: {len(tuned.runs)} runs over a grid of {', '.join(tuned.tuning)} per point; each "
                    f"point's result is its run of lowest validation loss ({len(table)} points; see Tuning).")
    try:
        loss_col = records.pick_column(table, cols.loss, records.LOSS_COLUMNS, "loss")
        compute_col = records.pick_column(table, cols.c, records.COMPUTE_COLUMNS, "compute")
        no_columns = ""
    except FitError as error:
        loss_col = compute_col = None
        no_columns = str(error)
    return Sweep(results, out, options, say, report, table, tuned, loss_col, compute_col, no_columns,
                 size_col=next((c for c in ((cols.n,) if cols.n else records.PARAMS_COLUMNS) if c in table.columns),
                               "params"),
                 seq_col=next((c for c in records.SEQ_LEN_COLUMNS if c in table.columns), "max_len"),
                 floor=floors.floor_for(table, loss_col) if loss_col else None,
                 compute_params=None if cols.n else records.params_for_compute(table))


def _runs(sweep: Sweep) -> None:
    sweep.report.heading("Runs")
    table = sweep.table
    shown = [c for c in RUN_COLUMNS + tuple(sweep.tuned.tuning if sweep.tuned else ()) if c in table.columns]
    sweep.report.table(shown, [[_fmt(v) for v in row] for row in table[shown].itertuples(index=False)])


def _frontier(sweep: Sweep) -> None:
    report, floor, loss_col, compute_col = sweep.report, sweep.floor, sweep.loss_col, sweep.compute_col
    report.heading("Loss vs compute: frontier and its law")
    if floor is not None:
        report.fits["floor"] = floor.to_json()
        oracle = (f"; a predictor that knows each user's taste reaches {floor.oracle:.4g}"
                  if floor.kind == "Bayes" else "")
        report.text(f"The source is a generator that knows its irreducible loss on the events {loss_col} is measured "
                    f"on: {floor.value:.4g} ± {floor.stderr:.2g} nats ({floor.kind} floor: the best a sequence model "
                    f"can do from the history it sees){oracle}. Every loss figure draws it; every fitted E is "
                    f"compared with it under Fitted laws.")
    if not loss_col:
        report.skip("loss vs compute", sweep.no_columns)
    elif (data := _complete(sweep.table, [compute_col, loss_col], "loss vs compute", report)) is not None:
        _attempt(report, "frontier", lambda: _frontier_law(sweep, data))


def _frontier_law(sweep: Sweep, data: pd.DataFrame) -> None:
    """The lower envelope of final loss against compute, the power law fitted to it, its residuals;
    in a tuned sweep, the same law on the base config's runs."""
    sweep.say("report: frontier fit ...")
    report, floor, loss_col, compute_col = sweep.report, sweep.floor, sweep.loss_col, sweep.compute_col
    columns = Columns(c=compute_col, loss=loss_col, n=sweep.cols.n)
    c, loss = records.numeric(data, compute_col), records.numeric(data, loss_col)
    on_front = frontier.lower_envelope(c, loss)
    fit = None
    try:
        fit = fit_table(data, "frontier", columns,
                        sweep.fit_options(sweep.options.holdout if on_front.sum() > 4 else 0)).result
    except FitError as error:
        report.skip("frontier law fit", str(error))
    sweep.figure(plots.loss_vs_compute(c, loss, on_front, fit, sweep.figures / "loss_vs_compute", compute_col,
                                       loss_col, floor),
                 "Final loss of every run against training compute; the lower envelope and the power "
                 "law fitted to it, with its bootstrap band" + (_FLOOR_CAPTION if floor else "."))
    if sweep.tuned is not None:  # the same law on the runs at the base config's values
        try:
            untuned = fit_table(sweep.tuned.untuned, "frontier", columns, sweep.fit_options()).result
            report.fits["frontier_untuned"] = _fit_json(untuned, floor)
            sweep.fit_rows.extend(_fit_rows("frontier L(C), untuned (base learning rate)", untuned, loss_col, floor))
        except FitError as error:
            report.skip("untuned frontier law", str(error))
    if fit is not None:
        sweep.laws["frontier"] = fit
        report.fits["frontier"] = _fit_json(fit, floor)
        sweep.fit_rows.extend(_fit_rows("frontier L(C)", fit, loss_col, floor))
        sweep.figure(plots.residuals(c[on_front], loss[on_front], plots.power.predict(fit.params, c[on_front]),
                                     sweep.figures / "residuals_frontier", compute_col, "Frontier law residuals"),
                     "Residuals of the frontier law on the frontier runs.")
        _holdout_row(sweep.holdout_rows, "frontier L(C)", fit)


def _training_curves(sweep: Sweep) -> None:
    sweep.report.heading("Training curves")
    if not sweep.loss_col:
        sweep.report.skip("training curves", sweep.no_columns)
    else:
        _attempt(sweep.report, "training curves", lambda: _curves_section(
            sweep.report, sweep.table, sweep.results, sweep.size_col, sweep.laws.get("frontier"), sweep.fit_rows,
            sweep.options, sweep.figures, sweep.out, sweep.say, floors.floor_for(sweep.table, "eval_loss")))


def _loss_vs_size(sweep: Sweep) -> None:
    report, loss_col, seq_col = sweep.report, sweep.loss_col, sweep.seq_col
    report.heading("Loss vs model size, per sequence length and data size")
    if not loss_col:
        report.skip("loss vs size", sweep.no_columns)
    elif (data := _complete(sweep.table, [sweep.size_col, loss_col, seq_col], "loss vs size", report)) is not None:
        budget_col = "steps" if "steps" in data.columns else "tokens" if "tokens" in data.columns else None
        for seq_value in sorted(pd.unique(records.numeric(data, seq_col))):
            _size_sections(report, data[records.numeric(data, seq_col) == seq_value], seq_col, seq_value,
                           sweep.size_col, loss_col, budget_col, sweep.fit_rows, sweep.options, sweep.figures,
                           sweep.out, sweep.say)


def _joint_law(sweep: Sweep) -> None:
    sweep.report.heading("Joint law L(N, D) and compute-optimal allocation")
    if not sweep.loss_col:
        sweep.report.skip("Chinchilla joint law", sweep.no_columns)
    else:
        _attempt(sweep.report, "Chinchilla joint law", lambda: _chinchilla(sweep))


def _chinchilla(sweep: Sweep) -> None:
    """Chinchilla's L(N, D) = E + A / N^alpha + B / D^beta and the allocation it implies."""
    sweep.say("report: Chinchilla joint law ...")
    report, cols, floor = sweep.report, sweep.cols, sweep.floor
    _, values = resolve_n_d_c(sweep.table, Columns(n=sweep.compute_n, d=cols.d, c=cols.c))
    spread = {name: np.unique(np.round(np.log(values[name]), 3)).size for name in ("n", "d")}
    if min(spread.values()) < 3:
        raise FitError(f"needs at least 3 distinct values of both N and D (has {spread['n']} and "
                       f"{spread['d']}); vary data as well as size")
    if sweep.compute_params:
        chosen, ratios = sweep.compute_params
        report.text(f"N is {chosen} here and in the IsoFLOP profiles: the count for which training compute "
                    f"is 6 N D (median train_flops / 6 N D: " + ", ".join(
                        f"{name} {ratio:.3g}" for name, ratio in ratios.items()) + ").")
    fitted = fit_table(sweep.table, "chinchilla", Columns(n=sweep.compute_n, d=cols.d, c=cols.c, loss=sweep.loss_col),
                       sweep.fit_options(sweep.options.holdout))
    fit = fitted.result
    sweep.laws["chinchilla"] = fit
    report.fits["chinchilla"] = _fit_json(fit, floor)
    sweep.fit_rows.extend(_fit_rows("Chinchilla L(N, D)", fit, sweep.loss_col, floor))
    sweep.figure(plots.chinchilla_allocation(fitted.data["n"], fitted.data["d"], fitted.data["loss"], fit,
                                             sweep.figures / "chinchilla_allocation", floor),
                 f"Runs in (C, N) coloured by loss with N_opt(C) from the joint law; fitted vs observed "
                 f"loss (N = {fitted.columns['n']}, D = {fitted.columns['d']})"
                 + ("; the fitted E and the generator's irreducible loss as lines." if floor else "."))
    _holdout_row(sweep.holdout_rows, "Chinchilla L(N, D)", fit)


def _isoflop_profiles(sweep: Sweep) -> None:
    sweep.report.heading("IsoFLOP profiles (approach 2)")
    if not sweep.loss_col:
        sweep.report.skip("IsoFLOP", sweep.no_columns)
        return
    _attempt(sweep.report, "IsoFLOP", lambda: _isoflop(sweep))
    if "isoflop" in sweep.laws and "chinchilla" in sweep.laws:
        _allocation_agreement(sweep.report, allocation.compare(sweep.laws["isoflop"], sweep.laws["chinchilla"]))


def _isoflop(sweep: Sweep) -> None:
    """A parabola in log N per compute budget (a profile per history length), its minima, the power
    law through them."""
    sweep.say("report: IsoFLOP ...")
    report, table, seq_col, tolerance = sweep.report, sweep.table, sweep.seq_col, FitOptions().budget_tolerance
    runs, budget_col = table, None
    if seq_col in table.columns and table[seq_col].nunique() > 1:  # a profile per history length
        budget_col = "isoflop_budget"
        runs = table.assign(**{budget_col: isoflop.group_budgets_within(
            records.numeric(table, sweep.compute_col), table[seq_col].astype(str).to_numpy(), tolerance)})
        report.text(f"A budget: runs within {tolerance} decades of compute at one {seq_col}.")
    cols = sweep.cols
    fitted = fit_table(runs, "isoflop", Columns(n=sweep.compute_n, d=cols.d, c=cols.c, loss=sweep.loss_col,
                                                budget=budget_col), sweep.fit_options())
    fit = fitted.result
    sweep.laws["isoflop"] = fit
    report.fits["isoflop"] = fit.to_json()
    sweep.fit_rows.extend(_fit_rows("IsoFLOP N_opt(C)", fit, "N*"))
    sweep.figure(plots.isoflop_curves(fitted.data["n"], fitted.data["loss"], fitted.data["c"], fitted.data["budget"],
                                      fit, sweep.figures / "isoflop", sweep.floor),
                 "Loss against size per compute budget with the fitted parabolas and their minima; the "
                 "power law through the minima" + (_FLOOR_CAPTION if sweep.floor else "."))
    minima = isoflop.budget_minima(fit)
    report.table(["budget C (FLOP)", "runs", "N* (params)", "loss at N*", "N* inside sampled sizes"],
                 [[_fmt(m.compute), str(m.runs), _fmt(m.n_opt), _fmt(m.loss_opt), "yes" if m.interior else "NO"]
                  for m in minima])
    outside = sum(not m.interior for m in minima)
    if outside:
        report.text(f"Caution: {outside} of {len(minima)} budget minima lie outside the sizes trained at that "
                    "budget; they are extrapolations of the parabola.")
    if fit.bootstrap and not fit.ci:
        report.text(f"No interval for N_opt(C): {fit.bootstrap - fit.bootstrap_failed} of {fit.bootstrap} "
                    f"resamples could be refitted, each the original draw again (each budget needs "
                    f"{isoflop.MIN_RUNS_PER_BUDGET} distinct sizes in a draw; more sizes per budget give an "
                    "interval).")
    if fit.extra["skipped_budgets"]:
        report.text("Budgets left out: " + "; ".join(fit.extra["skipped_budgets"]) + ".")


def _metric_laws(sweep: Sweep) -> None:
    """The ranking metric against compute (HSTU's log-linear form), model size and sequence length."""
    report, metric, size_col, seq_col = sweep.report, sweep.options.metric, sweep.size_col, sweep.seq_col
    report.heading(f"{metric}: scaling with compute, size and sequence length")
    if not sweep.compute_col:
        report.skip(f"{metric} law", sweep.no_columns)
    elif (data := _complete(sweep.table, [sweep.compute_col, metric], f"{metric} law", report)) is not None:
        def loglinear_law() -> None:
            fitted = fit_table(data, "loglinear", Columns(x=sweep.compute_col, y=metric),
                               sweep.fit_options(sweep.options.holdout))
            fit = fitted.result
            report.fits[f"{metric}_loglinear"] = fit.to_json()
            sweep.fit_rows.extend(_fit_rows(f"{metric} = a + b ln C", fit, metric))
            sweep.figure(plots.fitted_curve(fitted.data["x"], fitted.data["y"], fit, loglinear.predict,
                                            sweep.figures / "metric_vs_compute", sweep.compute_col, metric,
                                            log_y=False),
                         f"{metric} against training compute with the log-linear law (HSTU form).")
            _holdout_row(sweep.holdout_rows, f"{metric} = a + b ln C", fit)
        _attempt(report, f"{metric} log-linear law", loglinear_law)
    if (data := _complete(sweep.table, [size_col, metric, seq_col], f"{metric} vs size", report)) is not None:
        sizes, values, lengths = (records.numeric(data, name) for name in (size_col, metric, seq_col))
        sweep.figure(plots.metric_vs_params(sizes, values, lengths, sweep.figures / "metric_vs_params", metric,
                                            size_col),
                     f"{metric} against model size, one colour per sequence length.")
        sweep.figure(plots.metric_vs_seq_len(lengths, values, sizes, sweep.figures / "metric_vs_seq_len", metric,
                                             seq_col),
                     f"{metric} against sequence length, one line per model size.")


def _hardware(sweep: Sweep) -> None:
    sweep.report.heading("Hardware efficiency")
    if (data := _complete(sweep.table, [sweep.size_col, "mfu"], "MFU vs size", sweep.report)) is not None:
        groups = data["device_kind"].astype(str).to_numpy() if "device_kind" in data.columns else None
        sweep.figure(plots.mfu_vs_size(records.numeric(data, sweep.size_col), records.numeric(data, "mfu"),
                                       sweep.figures / "mfu_vs_size", groups, "device", sweep.size_col),
                     "Model FLOPs utilisation against model size.")


def _tuning_grid(sweep: Sweep) -> None:
    if sweep.tuned is not None:
        sweep.report.heading("Tuning")
        _attempt(sweep.report, "tuning", lambda: _tuning_section(sweep.report, sweep.tuned, sweep.figures, sweep.out))


def _fitted_laws(sweep: Sweep) -> None:
    report, fit_rows = sweep.report, sweep.fit_rows
    report.heading("Fitted laws")
    if not fit_rows:
        report.text("No law could be fitted; see Skipped.")
        return
    header = ["law", "target", "parameter", "estimate", "95% CI", "points", "R²", "RMSE (log)"]
    if any(row[len(header)] for row in fit_rows):
        report.text("Each E beside the generator's irreducible loss on the same events (± its standard error): "
                    "E − floor, whether E's 95% interval holds the floor, and whether the floor lies at or below "
                    "the interval's top (an E entirely below the reachable floor is a defect: no model beats it). "
                    "Both checks allow the floor 2 standard errors.")
        report.table(header + FLOOR_HEADER, fit_rows)
    else:
        report.table(header, [row[:len(header)] for row in fit_rows])


def _held_out(sweep: Sweep) -> None:
    report = sweep.report
    report.heading("Held-out extrapolation")
    if sweep.holdout_rows:
        report.text(f"Each law refitted without the {sweep.options.holdout} largest-compute run(s), then asked to "
                    "predict them.")
        report.table(["law", "held-out compute (FLOP)", "observed", "predicted", "error (%)"], sweep.holdout_rows)
    else:
        report.text("No held-out forecast was possible.")


def _skipped(sweep: Sweep) -> None:
    report = sweep.report
    report.heading("Skipped")
    for reason in report.skipped:
        report.text(f"- {reason}")
    if not report.skipped:
        report.text("Nothing was skipped.")


# the report, top to bottom; each section adds its blocks, and the laws later sections draw again
SECTIONS: tuple[Callable[[Sweep], None], ...] = (_runs, _frontier, _training_curves, _loss_vs_size, _joint_law,
                                                 _isoflop_profiles, _metric_laws, _hardware, _tuning_grid,
                                                 _fitted_laws, _held_out, _skipped)


def _tuning(table: pd.DataFrame, cols: Columns) -> "tuning_module.Tuning | None":
    """The tuned envelope of a sweep that tuned hyper-parameters per point, by validation loss;
    None when it tuned nothing (or has no loss to choose by: the sections that need one say so)."""
    if "tuned" not in table.columns:
        return None
    try:
        loss = "eval_loss" if "eval_loss" in table.columns else records.pick_column(
            table, cols.loss, records.LOSS_COLUMNS, "loss")
    except FitError:
        return None
    return tuning_module.split(table, loss)


def _tuning_section(report: Report, tuned: "tuning_module.Tuning", figures: Path, out: Path) -> None:
    """Per group of sizes: validation loss over the tuning grid, each size's optimum, and how far
    the optimum moves across sizes in grid steps."""
    loss = "eval_loss" if "eval_loss" in tuned.runs.columns else "final_train_loss"
    report.text(f"Validation loss ({loss}) of every run of the grid; * marks each size's best setting, which is "
                f"the point's result elsewhere in this report.")
    optima_by_group, train_optima_by_group = {}, {}
    for title, runs in tuning_module.groups(tuned):
        header, rows, optima = tuning_module.grid_table(runs, tuned.tuning, tuning_module.SIZE_LABEL, loss)
        steps = [index for _, index in optima.values()]
        report.text(f"{title}: the optimum moves {max(steps) - min(steps)} grid step(s) across {len(optima)} size(s).")
        report.table(header, rows)
        optima_by_group[title] = {str(size): {"best": best, "grid_index": index} for size, (best, index) in optima.items()}
        if loss != "final_train_loss" and "final_train_loss" in runs.columns:
            # what µP's transfer is about (Tensor Programs V plots training loss): free of overfitting
            header, rows, train_optima = tuning_module.grid_table(runs, tuned.tuning, tuning_module.SIZE_LABEL,
                                                                  "final_train_loss")
            steps = [index for _, index in train_optima.values()]
            report.text(f"{title}, by final training loss: the optimum moves {max(steps) - min(steps)} grid step(s) "
                        f"across {len(train_optima)} size(s).")
            report.table(header, rows)
            train_optima_by_group[title] = {
                str(size): {"best": best, "grid_index": index} for size, (best, index) in train_optima.items()}
        if "lr" in runs.columns and tuning_module.SIZE_LABEL in runs.columns:
            params = pd.to_numeric(runs.get("params_non_embedding", runs.get("params")), errors="coerce").to_numpy(float)
            report.figure(plots.loss_vs_learning_rate(
                pd.to_numeric(runs["lr"]).to_numpy(float), pd.to_numeric(runs[loss]).to_numpy(float),
                runs[tuning_module.SIZE_LABEL].astype(str).to_numpy(), params,
                figures / f"loss_vs_lr_{len(optima_by_group)}", title, loss),
                f"{loss} against the learning rate ({title}), one line per size; stars: each size's optimum.", out)
    report.fits["tuning"] = optima_by_group
    if train_optima_by_group:
        report.fits["tuning_by_final_train_loss"] = train_optima_by_group


def _curves_section(report: Report, table: pd.DataFrame, results: Path, size_col: str, final_fit: FitResult | None,
                    fit_rows: list[list[str]], options: ReportOptions, figures: Path, out: Path,
                    say: Callable[[str], None], floor: Floor | None = None) -> None:
    """Every trial's evaluations during training against tokens and FLOPs, one colour per size,
    and the frontier of the whole curves (Chinchilla approach 1) beside the final-point one."""
    say("report: training curves ...")
    if "trial_id" not in table.columns:
        raise FitError("the results have no trial_id column (not a sweep's results.jsonl)")
    data = curves.load_curves(results, table["trial_id"].astype(str).tolist())
    sizes_by_trial = dict(zip(table["trial_id"].astype(str), pd.to_numeric(table[size_col], errors="coerce")))
    data["size"] = data["trial_id"].map(sizes_by_trial)
    report.text(f"{len(data)} evaluations of {data['trial_id'].nunique()} runs (validation split), read from each "
                f"run's metrics.jsonl; colour by {size_col}.")
    for metric, log_y in (("eval_loss", True), ("hr@10", False)):
        for x_col in ("tokens", "train_flops"):
            rows = data[[x_col, metric, "size"]].notna().all(axis=1) & (data[x_col] > 0)
            if not rows.any():
                report.skip(f"{metric} vs {x_col} during training", f"no evaluation has both {metric} and {x_col}")
                continue
            part = data[rows]
            x, y = part[x_col].to_numpy(float), part[metric].to_numpy(float)
            envelope = fit = None
            if metric == "eval_loss" and x_col == "train_flops":
                envelope = frontier.lower_envelope(x, y)
                try:
                    fit = frontier.fit_frontier(x, y, bootstrap=options.bootstrap, seed=options.seed)
                    report.fits["frontier_whole_curves"] = _fit_json(fit, floor)
                    fit_rows.extend(_fit_rows("frontier L(C), whole curves (approach 1)", fit, "eval_loss", floor))
                except FitError as error:
                    report.skip("whole-curve frontier law", str(error))
            caption = (f"Validation {metric} at every evaluation during training against {x_col}, one line per run, "
                       f"one colour per model size.")
            if envelope is not None:
                caption += (" Black: the lower envelope over all runs' evaluations; red: the power law fitted to it "
                            "(Chinchilla approach 1); dashed: the law of the final-point frontier above.")
            shown_floor = floor if metric == "eval_loss" else None
            if shown_floor is not None:
                caption += " D" + _FLOOR_CAPTION[3:]
            report.figure(plots.training_curves(x, y, part["trial_id"].to_numpy(), part["size"].to_numpy(float),
                                                figures / f"curve_{metric.replace('@', '')}_vs_{x_col}", x_col,
                                                metric, envelope, fit, final_fit if envelope is not None else None,
                                                log_y, shown_floor), caption, out)


def _data_sizes(group: pd.DataFrame, size_col: str, budget_col: str | None) -> list[tuple[float | None, pd.DataFrame]]:
    """The runs of one sequence length split by data size (budget_col) where >= 4 sizes share one;
    else the runs with the most training of that length (one group)."""
    if budget_col is None:
        return [(None, group)]
    budget = pd.to_numeric(group[budget_col], errors="coerce")
    shared = [(float(value), group[budget == value]) for value in sorted(budget.dropna().unique())
              if group.loc[budget == value, size_col].nunique() >= 4]
    return shared or [(None, group[budget >= 0.95 * budget.max()])]


def _size_sections(report: Report, group: pd.DataFrame, seq_col: str, seq_value: float, size_col: str, loss_col: str,
                   budget_col: str | None, fit_rows: list[list[str]], options: ReportOptions, figures: Path, out: Path,
                   say: Callable[[str], None]) -> None:
    """L(N) = E + A N^-alpha at each data size of one sequence length, on one figure."""
    splits = _data_sizes(group, size_col, budget_col)
    curves = []
    for budget, runs in splits:
        runs = runs.reset_index(drop=True)
        runs.attrs.update(group.attrs)
        label = f"L(N) at {seq_col}={_fmt(seq_value)}" + (f", {budget_col}={_fmt(budget)}" if len(splits) > 1 else "")

        def fit_one(runs: pd.DataFrame = runs, label: str = label) -> None:
            say(f"report: {label} ...")
            fitted = fit_table(runs, "power", Columns(x=size_col, y=loss_col),
                               FitOptions(bootstrap=options.bootstrap, seed=options.seed, direction="falling"))
            run_floor = floors.floor_for(runs, loss_col)
            report.fits[label] = _fit_json(fitted.result, run_floor)
            fit_rows.extend(_fit_rows(label, fitted.result, loss_col, run_floor))
            curves.append((label, fitted.data["x"], fitted.data["y"], fitted.result, run_floor))
        _attempt(report, label, fit_one)
    if curves:
        floor = min((c[4] for c in curves if c[4] is not None), key=lambda f: f.value, default=None)
        held = (f"one curve per data size ({budget_col})" if len(splits) > 1 and splits[0][0] is not None
                else "the longest training at that length")
        report.figure(plots.size_curves(curves, figures / f"loss_vs_size_{seq_col}{_fmt(seq_value)}", size_col,
                                        loss_col, floor),
                      f"Final {loss_col} against model size at {seq_col} = {_fmt(seq_value)} ({held}), with the "
                      f"saturating power law L = E + A N^-alpha and its bootstrap band"
                      + (_FLOOR_CAPTION if floor else "."), out)


def _holdout_row(rows: list[list[str]], name: str, fit: FitResult) -> None:
    forecast = fit.extra.get("holdout")
    if not forecast:
        return
    for c, observed, predicted, error in zip(forecast["compute"], forecast["observed"], forecast["predicted"],
                                             forecast["relative_error"]):
        rows.append([name, _fmt(c), _fmt(observed), _fmt(predicted), f"{100 * error:+.2f}"])
