"""`python -m sweeps show|run|status SPEC`: expand a sweep spec, run its trials, report laws.

  show SPEC                   the expanded trials, one line each, before anything runs;
                              --accelerator v5p-32: per trial the per-device HBM its compiled
                              step needs against the chip's, and chip-hours at --mfu
  run SPEC [--launcher L]     run what is not done yet (local: one subprocess per trial), then
                              fit and plot the results into WORKDIR/report/
  status SPEC                 done / running / failed / pending per trial
  export SPEC --best METRIC --out DIR
                              export the finished trial with the best METRIC (a results.jsonl
                              key; losses are minimised, the rest maximised) by scaling.export
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from etils import epath

from data.errors import DataError
from scaling.config import ConfigError
from scaling.services.metrics_log import read_lines
from scaling.services.workdir import is_local
from sweeps import runner
from sweeps.results import ResultsStore
from sweeps.spec import Sweep, describe, format_number, load_spec

LAUNCHERS = ("local", "tpu-vm", "queued-resources", "xpk", "slurm")
LAUNCHER_FLAGS = ("accelerator_type", "zone", "project", "runtime_version", "cluster", "num_slices", "tpu_name",
                  "code_url", "code_ref", "partition", "account", "nodes", "gpus_per_node", "time_limit",
                  "container_image", "setup", "xla_flags", "code_dir")


def _workdir(args: argparse.Namespace, sweep: Sweep) -> epath.Path:
    return epath.Path(args.workdir or f"workdirs/{sweep.name}")


def _num_items(sweep: Sweep) -> int | None:
    """The catalogue size of the sweep's dataset when it can be read here without a download."""
    from data.dataset import prepare
    from data.sources import readable_offline

    if not readable_offline(sweep.base.data.name):
        return None
    try:
        return prepare(sweep.base.data.name).sequences.num_items
    except DataError:
        return None


def cmd_show(args: argparse.Namespace) -> dict[str, Any]:
    sweep = load_spec(args.spec)
    trials = runner.select(sweep.trials(), args.only)
    num_items = args.num_items or _num_items(sweep) or sweep.num_items
    rows = [describe(trial, num_items) for trial in trials]
    totals = None
    if args.accelerator:
        from sweeps import plan

        if not num_items:
            raise ConfigError(f"--accelerator: the catalogue size of {sweep.base.data.name} is not known here; "
                              f"pass --num-items")
        planned, totals = plan.plan(trials, num_items, args.accelerator, args.mfu, runner.log)
        for row, extra in zip(rows, planned):
            row.update(extra)
    if not args.json:
        print(f"# sweep {sweep.name}: {len(rows)} trials on {sweep.base.data.name}" +
              (f", {num_items} items" if num_items else " (dataset not readable here)"))
        for row in rows:
            print("  ".join(f"{k}={_shown(k, v)}" for k, v in row.items() if k != "catalogue_tables"))
        if totals:
            print(f"# {totals['accelerator']} ({totals['devices']} x {totals['device_kind']}, "
                  f"{totals['hbm_bytes_per_device'] / 1e9:.0f} GB HBM, {totals['peak_flops_per_device'] / 1e12:.0f} "
                  f"TFLOP/s bf16 each; {totals['source']})")
            print(f"# total: {totals['chip_hours']:.1f} chip-hours ({totals['wall_hours']:.2f} h on the slice) at "
                  f"MFU {totals['assumed_mfu']:.0%}; largest step {totals['max_hbm_bytes'] / 1e9:.1f} GB per device; "
                  f"{totals['trials_over_hbm']} of {len(rows)} trials over HBM"
                  + (f"; {totals['trials_without_steps']} trials train by epochs (no FLOPs planned)"
                     if totals["trials_without_steps"] else ""))
    return {"sweep": sweep.name, "num_items": num_items, "trials": rows, **({"plan": totals} if totals else {})}


def _shown(key: str, value: Any) -> str:
    if key == "hbm_bytes":
        return f"{value / 1e9:.1f}GB"
    if key == "hbm_fraction":
        return f"{value:.0%}"
    if key == "chip_hours":
        return "-" if value is None else f"{value:.2f}"
    return format_number(value)


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    sweep = load_spec(args.spec)
    trials = runner.select(sweep.trials(), args.only)
    states = runner.status_of(_workdir(args, sweep), trials)
    counts = {state: list(states.values()).count(state) for state in runner.STATES}
    if not args.json:
        for trial in trials:
            labels = " ".join(f"{k}={v}" for k, v in trial.labels.items())
            print(f"{states[trial.trial_id]:<8} {trial.trial_id} {labels}")
        print("  ".join(f"{k}: {v}" for k, v in counts.items()))
    return {"sweep": sweep.name, **counts, "trials": states}


def _launcher(args: argparse.Namespace, sweep: Sweep):
    from sweeps.launchers import make_launcher
    from sweeps.launchers.base import settings_from

    flags = {name: getattr(args, name) for name in LAUNCHER_FLAGS if getattr(args, name) is not None}
    flags["sweep_name"] = sweep.name
    if args.spot:
        flags["spot"] = True
    if args.reserved:
        flags["reserved"] = True
    return make_launcher(args.launcher, settings_from(flags, dict(sweep.launcher)))


def write_report(workdir: epath.Path) -> str | None:
    """Fits and figures of the results into WORKDIR/report (via `python -m analysis report`). The
    analysis reads local files: an object-store workdir's results and trial metrics are staged in a
    local folder and the report is copied back."""
    report = workdir / "report"
    with tempfile.TemporaryDirectory(prefix="report-") as staging:
        local = workdir if is_local(workdir) else stage_results(workdir, Path(staging))
        command = [sys.executable, "-m", "analysis", "report", str(local / "results.jsonl"), "--out", str(local / "report")]
        done = subprocess.run(command, cwd=str(runner.REPO_ROOT), capture_output=True, text=True)
        if done.returncode != 0:
            runner.log(f"report failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
            return None
        if not is_local(workdir):
            copy_tree(Path(local) / "report", report)
    runner.log(f"report written to {report}")
    return str(report)


def stage_results(workdir: epath.Path, local: Path) -> Path:
    """WORKDIR's results.jsonl and each recorded trial's metrics (as one metrics.jsonl) in `local`."""
    (local / "results.jsonl").write_text((workdir / "results.jsonl").read_text())
    for trial_id in ResultsStore(workdir).load():
        lines = read_lines(workdir / "trials" / trial_id)
        if lines:
            (local / "trials" / trial_id).mkdir(parents=True)
            (local / "trials" / trial_id / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return local


def copy_tree(source: Path, target: epath.Path) -> None:
    """Every file under the local folder `source` to the same place under `target` (gs:// too)."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / str(path.relative_to(source))
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(path.read_bytes())


def cmd_run(args: argparse.Namespace) -> dict[str, Any]:
    sweep = load_spec(args.spec)
    workdir = _workdir(args, sweep)
    trials = runner.select(sweep.trials(), args.only)
    if args.launcher == "local":
        if args.dry_run:
            for trial in trials:
                print(shlex.join([sys.executable, "-m", "scaling.train", *runner.train_args(workdir, trial)]))
            return {"sweep": sweep.name, "dry_run": True, "trials": len(trials)}
        run_one = lambda trial: runner.run_local_trial(workdir, trial)
    else:
        launcher = _launcher(args, sweep)
        if args.dry_run:
            for trial in trials:
                print(f"# trial {trial.trial_id} " + " ".join(f"{k}={v}" for k, v in trial.labels.items()))
                print(launcher.dry_run_text(trial.trial_id, runner.train_args(workdir, trial), str(workdir)), end="")
            return {"sweep": sweep.name, "dry_run": True, "trials": len(trials)}
        launcher.check_ready(str(workdir))  # once, before any trial is marked running

        def run_one(trial):
            outcome = launcher.run(trial.trial_id, runner.train_args(workdir, trial), str(workdir))
            for attempt in range(1, launcher.settings.preemption_retries + 1):
                if outcome.status != "preempted":
                    break
                runner.log(f"{trial.trial_id}: preempted; re-queued ({attempt}/{launcher.settings.preemption_retries}), "
                           f"it resumes from its last checkpoint")
                outcome = launcher.run(trial.trial_id, runner.train_args(workdir, trial), str(workdir))
            result_path = runner.trial_dir(workdir, trial) / "result.json"
            result = json.loads(result_path.read_text()) if result_path.exists() else {}
            if outcome.status != "ok":
                result["status"] = outcome.status
            return result
    workdir.mkdir(parents=True, exist_ok=True)
    finished = runner.run_trials(sweep, workdir, trials, args.parallel, run_one, args.progress_every)
    records = ResultsStore(workdir).load()
    ok = sum(1 for r in records.values() if r["status"] == "ok")
    report = write_report(workdir) if ok and not args.no_report else None
    return {"sweep": sweep.name, "workdir": str(workdir), "ran": len(finished), "ok": ok,
            "failed": sum(1 for r in records.values() if r["status"] != "ok"),
            "results": str(workdir / "results.jsonl"), "report": report}


def best_trial(sweep: Sweep, workdir: epath.Path, metric: str) -> tuple[Any, dict[str, Any]]:
    """(trial, its record) of the sweep's finished trial with the best `metric`."""
    records = ResultsStore(workdir).load()
    trials = {trial.trial_id: trial for trial in sweep.trials()}
    scored = [(r[metric], trial_id) for trial_id, r in records.items()
              if r.get("status") == "ok" and trial_id in trials and isinstance(r.get(metric), (int, float))]
    if not scored:
        known = sorted({k for r in records.values() for k, v in r.items() if isinstance(v, (int, float))})
        raise ConfigError(f"--best {metric}: no finished trial of {sweep.name} in {workdir} has it"
                          + (f"; numeric keys: {', '.join(known[:12])}..." if known else " (no results yet)"))
    _, trial_id = (min if "loss" in metric else max)(scored)
    return trials[trial_id], records[trial_id]


def _step_metric(best: str) -> str:
    """The metrics.jsonl eval key that ranks one trial's checkpoints like `best` ranks trials."""
    name = best.removeprefix("valid_").removeprefix("test_")
    return "valid_" + ("loss" if name in ("eval_loss", "test_loss", "loss") else name)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from scaling import export

    sweep = load_spec(args.spec)
    workdir = _workdir(args, sweep)
    trial, record = best_trial(sweep, workdir, args.best)
    runner.log(f"best {args.best} = {record[args.best]:.6g}: trial {trial.trial_id} "
               + " ".join(f"{k}={v}" for k, v in trial.labels.items()))
    try:
        summary = export.export_trial(runner.trial_dir(workdir, trial), Path(args.out), args.step,
                                      _step_metric(args.best),
                                      args.k, export.PLATFORMS, runner.log)
    except export.ExportError as error:
        raise ConfigError(str(error)) from None
    return {"sweep": sweep.name, "trial_id": trial.trial_id, "labels": trial.labels, args.best: record[args.best],
            "out": summary["out"], "total_bytes": summary["total_bytes"], "step": summary["step"]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweeps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, run, text in (("show", cmd_show, "list the expanded trials"),
                            ("run", cmd_run, "run the trials that are not done"),
                            ("status", cmd_status, "done / running / failed / pending"),
                            ("export", cmd_export, "export the best finished trial for serving")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(run=run)
        sub.add_argument("spec", help="a sweep spec file, e.g. sweeps/configs/ml100k_hstu.py")
        sub.add_argument("--only", help="run/show only trials whose id or label=value text matches this glob")
        sub.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        if name != "show":
            sub.add_argument("--workdir", help="where trials and results go (default: workdirs/SWEEP_NAME; gs:// ok)")
    show_parser = commands.choices["show"]
    show_parser.add_argument("--accelerator", help="plan for this accelerator type: per-device HBM against its "
                                                   "capacity and chip-hours (e.g. v5p-32, v5litepod-16, h100-8)")
    show_parser.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for chip-hours (default 0.4)")
    show_parser.add_argument("--num-items", type=int, help="catalogue size (default: the dataset's, or the spec's)")
    export_parser = commands.choices["export"]
    export_parser.add_argument("--best", required=True, help="results.jsonl metric, e.g. hr@10 or eval_loss")
    export_parser.add_argument("--out", required=True, help="the export directory (must not exist or be empty)")
    export_parser.add_argument("--step", default="last", help="checkpoint of that trial: N, last, best")
    export_parser.add_argument("--k", type=int, default=50, help="items the serving function returns")
    run_parser = commands.choices["run"]
    run_parser.add_argument("--launcher", choices=LAUNCHERS, default="local")
    run_parser.add_argument("--dry-run", action="store_true", help="print the exact commands, run nothing")
    run_parser.add_argument("--parallel", type=int, default=1, help="trials at once: processes on this machine (local launcher), or "
                            "jobs / slices submitted and followed at once (cluster launchers)")
    run_parser.add_argument("--no-report", action="store_true", help="skip the fits and plots at the end")
    run_parser.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                            help="not on a terminal: a progress line per running trial this often (default 30)")
    tpu = run_parser.add_argument_group("TPU launchers (flags win over the spec's launcher block)")
    tpu.add_argument("--accelerator-type", help="e.g. v5litepod-16, v5p-32")
    tpu.add_argument("--zone")
    tpu.add_argument("--project")
    tpu.add_argument("--runtime-version")
    tpu.add_argument("--cluster", help="xpk cluster")
    tpu.add_argument("--num-slices", type=int, help="xpk slices")
    tpu.add_argument("--tpu-name", help="tpu-vm launcher: an existing TPU VM")
    tpu.add_argument("--code-url", help="git URL of this repository that the TPU workers clone")
    tpu.add_argument("--code-ref", help="commit or branch the workers check out (default main)")
    tpu.add_argument("--spot", action="store_true")
    tpu.add_argument("--reserved", action="store_true")
    slurm = run_parser.add_argument_group("SLURM launcher (flags win over the spec's launcher block)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--nodes", type=int, help="nodes per trial (one task per node)")
    slurm.add_argument("--gpus-per-node", type=int)
    slurm.add_argument("--time-limit", help="sbatch --time, e.g. 24:00:00")
    slurm.add_argument("--container-image", help="srun --container-image (pyxis)")
    slurm.add_argument("--setup", help="shell commands run before training (environment, modules)")
    slurm.add_argument("--xla-flags", help="XLA_FLAGS for the trials, written --xla-flags=\"--xla_gpu_enable_latency_hiding_scheduler=true\"")
    slurm.add_argument("--code-dir", help="the repository checkout on the cluster (default: this one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = args.run(args)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `sweeps show SPEC | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as error:  # e.g. the results store cannot be written: what it holds stays whole
        print(f"error: {error.filename or 'the sweep workdir'}: {error.strerror or error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    return 0 if result.get("failed", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
