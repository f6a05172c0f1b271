"""`python -m scaling.train`: train a registered model family on a device mesh, evaluate, write results.

WORKDIR/config.json     the trial configuration (its hash is the trial id)
WORKDIR/metrics.jsonl   one line per log step ("learning/", "perf/") and per eval ("eval/")
WORKDIR/result.json     one flat object: sizes, tokens, FLOPs, MFU, losses, test metrics, status
WORKDIR/progress.json   step, total, loss, tokens/s, MFU, ETA and phase while it runs (sweeps watch it)
WORKDIR/events.out.*    TensorBoard scalars of metrics.jsonl (a sweep's trial: in a folder named by
                        its labels, WORKDIR/size=...,max_len=.../)
WORKDIR/checkpoints/    orbax: train state + data iterator state; a rerun resumes from the last
                        that restores (a damaged one is moved to WORKDIR/corrupt_checkpoints/)

SIGTERM (preemption notice) saves the current step and exits with status 143 once it is
committed; a killed run (SIGKILL) loses only the steps since its last checkpoint: rerunning the
command continues to the numbers an uninterrupted run gives. One process per workdir (a lock).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import jax
import numpy as np
from etils import epath

from data.dataset import prepare_section
from data.errors import DataError
from data.floors import loss_floors
from data.pipeline import PipelineConfig, epoch_plan, eval_dataset, train_dataset
from data.ranking import DEFAULT_KS, ranking_metrics, ranks_from_top_k
from data.split import EvalTargets, eval_subset, leave_one_out
from models.core import family as families
from scaling import checkpoint, distributed, flops, hardware, host
from scaling.preemption import EXIT_PREEMPTED, Preempted, StopRequest, stop_with_parent
from scaling.profiling import StepProfiler, parse_range
from scaling.selection import BestEvaluation
from scaling.lease import WorkdirBusy, workdir_lock
from scaling.workdir import write_atomically
from scaling.config import ConfigError, ModelConfig, TrialConfig, from_json, with_overrides
from scaling.mesh import logical_names, make_mesh, parse_mesh_spec
from scaling.meter import StepMeter
from scaling.metrics_log import MetricsLog, read_records
from scaling.progress import TrialProgress
from scaling.tensorboard import EventLog
from scaling.presets import PRESETS, preset
from scaling.trainer import build_trainer


class NonFiniteError(Exception):
    """A step whose loss or gradient is not finite: the trial stops before saving that state."""

    def __init__(self, step: int, what: str):
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step


def check_finite(step: int, metrics: dict) -> None:
    """Raise NonFiniteError when step's loss or gradient norm is NaN or infinite. Checked as each
    step's metrics are read, before any checkpoint of that step's state is started."""
    for name, what in (("loss_sum", "loss"), ("grad_norm", "gradient")):
        if not math.isfinite(float(metrics[name])):
            raise NonFiniteError(step, what)


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


def evaluate(trainer: Any, params: Any, targets: EvalTargets) -> dict[str, float]:
    """Ranking metrics (and the family's eval loss, if it has one) over every user's target:
    from each target's rank, or from the family's top-K lists (metrics at K up to the list's
    length only). A family may add named lists beside the rank ("lists": {name: top-K}, metrics
    as name_hr@10, ...) and per-row values to average ("means": {name: (B,)}). A family that
    also ranks with the history kept ("rank_with_history") gives both rules: train.exclude_history
    picks the headline, the other is named history_included_* / history_excluded_*."""
    config = trainer.config
    ranks, ranks_with_history, losses, list_length = [], [], [], None
    named: dict[str, list] = {}
    named_length: dict[str, int] = {}
    means: dict[str, list] = {}
    for host_batch in eval_dataset(targets, config.data.row_len, config.train.eval_batch_size,
                                   history_len=config.data.max_len):
        out = trainer.eval_step(params, trainer.eval_batch(host_batch))
        valid = np.asarray(out["valid"])
        if "rank_with_history" in out:
            ranks_with_history.append(np.asarray(out["rank_with_history"])[valid])
        if "rank" in out:
            ranks.append(np.asarray(out["rank"])[valid])
        else:
            top_k = np.asarray(out["top_k"])
            list_length = top_k.shape[1]
            ranks.append(ranks_from_top_k(top_k, np.asarray(out["target"]))[valid])
        for name, top_k in out.get("lists", {}).items():
            top_k = np.asarray(top_k)
            named_length[name] = top_k.shape[1]
            named.setdefault(name, []).append(ranks_from_top_k(top_k, np.asarray(out["target"]))[valid])
        for name, values in out.get("means", {}).items():
            means.setdefault(name, []).append(np.asarray(values, np.float64)[valid])
        if "loss" in out:
            losses.append(np.asarray(out["loss"])[valid])
    ks = [k for k in DEFAULT_KS if list_length is None or k <= list_length]
    metrics = ranking_metrics(np.concatenate(ranks), ks)
    if ranks_with_history:
        with_history = ranking_metrics(np.concatenate(ranks_with_history), ks)
        if config.train.exclude_history:
            metrics.update({f"history_included_{key}": value for key, value in with_history.items()})
        else:
            metrics = {**with_history, **{f"history_excluded_{key}": value for key, value in metrics.items()}}
    for name, parts in named.items():
        shown = [k for k in DEFAULT_KS if k <= named_length[name]] or [named_length[name]]
        metrics.update({f"{name}_{key}": value for key, value in ranking_metrics(np.concatenate(parts), shown).items()})
    metrics.update({name: float(np.mean(np.concatenate(parts))) for name, parts in means.items()})
    if losses:
        metrics["loss"] = float(np.mean(np.concatenate(losses)))
    return metrics


def run(config: TrialConfig, workdir: epath.Path, stop: StopRequest | None = None,
        profile: tuple[int, int] | None = None, still_owner: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Train one trial to completion (resuming if WORKDIR has checkpoints); returns result.json.
    Raises Preempted after saving the current step when `stop` is requested (SIGTERM).
    profile: (START, STOP) training steps to trace into WORKDIR/profile/.
    still_owner: raises (WorkdirLost) once another process owns the workdir; checked every step."""
    stop = stop or StopRequest()
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    train_cfg, data_cfg = config.train, config.data

    # ---- Data -------------------------------------------------------------------------------
    mesh = make_mesh(config.mesh.spec)  # an impossible mesh fails before any data is read
    prepared = prepare_section(data_cfg)
    split = eval_subset(leave_one_out(prepared.sequences, data_cfg.split), data_cfg.eval_users)
    num_items = prepared.sequences.num_items
    seen = min(data_cfg.max_len, data_cfg.row_len)  # the history items an evaluated target sees (eval_dataset)
    floors = loss_floors(data_cfg.name, {"": split.valid, "test_": split.test}, seen)
    pipeline = PipelineConfig(batch_size=train_cfg.batch_size, row_len=data_cfg.row_len, packed=data_cfg.packed,
                              window=data_cfg.window, whole_epochs=data_cfg.whole_epochs, seed=train_cfg.seed)
    rows_per_epoch = epoch_plan(split.train, pipeline, 0).num_rows
    steps_per_epoch = math.ceil(rows_per_epoch / train_cfg.batch_size)  # the reference counts a partial batch
    total_steps = train_cfg.steps or math.ceil(train_cfg.epochs * steps_per_epoch)
    log(f"data {data_cfg.name}: {split.train.num_users} users, {num_items} items, {rows_per_epoch} rows/epoch, "
        f"{total_steps} steps")

    # ---- Compiled steps, restored or fresh state ---------------------------------------------
    trainer = build_trainer(config, num_items, mesh, total_steps, prepared=prepared, log=log)
    init_key, step_key = jax.random.split(jax.random.key(train_cfg.seed))
    if jax.process_index() == 0:
        (workdir / "param_axes.json").write_text(json.dumps(logical_names(trainer.boxed_params), indent=1, sort_keys=True))
    with trainer.context():
        checkpoints = checkpoint.manager(workdir / "checkpoints", train_cfg.keep_checkpoints)
        iterator = iter(train_dataset(split.train, pipeline))
        target = checkpoint.abstract_like(trainer.abstract_state, trainer.shardings)
        restored = checkpoint.restore_latest(checkpoints, target, log)
        resumed_from = restored[0] if restored else None
        first_process = jax.process_index() == 0
        events = EventLog(workdir, resumed_from, enabled=first_process)
        metrics_log = MetricsLog(workdir, events)
        best = BestEvaluation()  # the evaluation the result reports
        earlier_seconds = 0.0  # wall time of the runs this one resumes (to their last checkpoint)
        if restored:
            _, state, saved = restored
            iterator.set_state(saved["iterator"])
            best = BestEvaluation.from_state(saved.get("best_eval"))
            earlier_seconds = float(saved.get("wall_seconds", 0.0))
            metrics_log.keep_until(resumed_from, evaluation_at_step=resumed_from < total_steps)
            log(f"resumed from step {resumed_from}")
        else:
            state = trainer.init(init_key)
            metrics_log.keep_until(0)
        train_step = trainer.train_step

        # ---- Train --------------------------------------------------------------------------
        peak_per_device, peak_source = hardware.peak_flops_per_device(config.model.compute_dtype)
        peak_total = peak_per_device * jax.device_count()
        step = int(state["step"])
        meter = StepMeter(first_timed_step=step + 2, log_every=train_cfg.log_every, total_steps=total_steps,
                          peak_flops=peak_total, tokens=saved["tokens"] if resumed_from is not None else 0.0,
                          flops=saved["train_flops"] if resumed_from is not None else 0.0)
        if resumed_from is not None:
            meter.final_loss = float(saved.get("final_train_loss", meter.final_loss))
        pending: list[tuple] = []  # the last dispatched step, read after the next one is dispatched
        display = TrialProgress(workdir, total_steps, enabled=first_process)
        eval_steps = evaluation_steps(train_cfg, total_steps)
        profiler = StepProfiler(profile, workdir / "profile")  # every process traces its own devices, a file per host

        def drain() -> None:
            while pending:
                done_step, metrics = pending.pop()
                check_finite(done_step, metrics)
                counts = {name: float(value) for name, value in metrics["counts"].items()}
                step_flops = flops.model_flops_from_counts(config.model, train_cfg, counts, num_items)
                record = meter.record(done_step, metrics, counts["tokens"], step_flops)
                if record is not None:
                    metrics_log.write(record)
                    display.train(record)

        def resume_state() -> dict:
            """What a resumed run needs besides the train state: data position, cumulative counts."""
            return {"iterator": iterator.get_state(), "tokens": meter.tokens, "train_flops": meter.flops,
                    "final_train_loss": meter.final_loss,  # what a run resumed at the last step reports
                    "best_eval": best.to_state(), "wall_seconds": earlier_seconds + time.perf_counter() - started}

        def write_eval(valid: dict, test: dict, then: str) -> None:
            """An eval record, at the step's cumulative tokens and FLOPs (the training curves' x-axes)."""
            best.offer(step, valid, test)
            metrics_log.write({"step": step, "progress/tokens": meter.tokens, "progress/train_flops": meter.flops,
                               **{f"eval/valid_{k}": v for k, v in valid.items()},
                               **{f"eval/test_{k}": v for k, v in test.items()}})
            shown = lambda m: " ".join(f"{k} {m[k]:.4f}" for k in ("loss", "hr@10", "ndcg@10") if k in m)
            display.phase(then, f"eval step {step}: valid {shown(valid)}, test {shown(test)}")

        try:
            while step < total_steps:
                still_owner()
                profiler.before(step + 1)
                state, metrics = train_step(state, trainer.train_batch(next(iterator)), step_key)
                step += 1
                profiler.after(step, metrics)
                drain()
                pending.append((step, metrics))
                if step in eval_steps:  # before a checkpoint of the same step, which then holds its selection
                    drain()
                    eval_started = time.perf_counter()
                    display.phase("eval")
                    write_eval(evaluate(trainer, state["params"], split.valid),
                               evaluate(trainer, state["params"], split.test), "train")
                    meter.exclude(time.perf_counter() - eval_started)
                saved_now = bool(train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0)
                # the records up to a checkpoint are written before it is started: a failed write
                # of them leaves the step without a checkpoint, so a resumed run logs them again
                if saved_now:
                    drain()
                    metrics_log.flush()
                    checkpoint.save(checkpoints, step, state, resume_state())
                    events.flush()
                if stop.requested():
                    drain()
                    metrics_log.flush()
                    if not saved_now:
                        checkpoint.save(checkpoints, step, state, resume_state())
                    log(f"SIGTERM: saving step {step} and stopping")
                    raise Preempted(step)
            drain()
            if step > (resumed_from or 0) and (not train_cfg.checkpoint_every or step % train_cfg.checkpoint_every):
                metrics_log.flush()
                checkpoint.save(checkpoints, step, state, resume_state())
            display.phase("eval")
            # ---- Final evaluation -----------------------------------------------------------
            test = evaluate(trainer, state["params"], split.test)
            valid = evaluate(trainer, state["params"], split.valid)
            write_eval(valid, test, "done")
            metrics_log.flush()
        finally:  # an interrupted run still completes the checkpoint it started
            checkpoints.wait_until_finished()
            checkpoints.close()
            profiler.close()
            events.close()
            display.close()
    this_run_seconds = time.perf_counter() - started
    counted = flops.param_counts(config.model, num_items)
    non_embedding = counted["params_non_embedding"]
    result = {
        "trial_id": config.trial_id,
        "status": "ok",
        "model": config.model.family,
        "data": data_cfg.name,
        "split": data_cfg.split,
        "params": trainer.param_count,
        "params_non_embedding": non_embedding,
        "params_active": counted["params_active"],
        **trainer.family.summary(config.model),
        **trainer.functions.model.provenance(),
        "max_len": data_cfg.max_len,
        "packed": data_cfg.packed,
        "seed": train_cfg.seed,
        "batch_size": train_cfg.batch_size,
        "grad_accum": trainer.config.train.grad_accum,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "tokens": meter.tokens,
        "train_flops": meter.flops,
        "six_n_d": flops.six_n_d(non_embedding, meter.tokens),
        "flop_convention": flops.FLOP_CONVENTION,
        "wall_seconds": earlier_seconds + this_run_seconds,  # over every resumed segment
        "wall_seconds_this_run": this_run_seconds,
        **meter.summary(),
        "peak_flops": peak_total,
        "peak_flops_source": peak_source,
        "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "mesh": dict(mesh.shape),
        "final_train_loss": meter.final_loss,
        "eval_loss": valid.get("loss"),
        "test_loss": test.get("loss"),
        **floors,  # a synthetic source's irreducible loss on the events of eval_loss (test_: of test_loss)
        # test metrics at the evaluation of best validation HR@10 (scaling/selection.py), the last beside
        "selected_step": best.step,
        **{key: best.test.get(key) for key in RESULT_METRICS},
        **{f"last_{key}": test.get(key) for key in RESULT_METRICS},
        **{f"valid_{key}": best.valid.get(key) for key in VALID_METRICS},
        **{key: value for key, value in best.test.items() if key not in STANDARD_METRICS},  # a family's own
        "resumed_from_step": resumed_from,
        **plateau(workdir),
    }
    return result


def evaluation_steps(train: Any, total_steps: int) -> set[int]:
    """Steps before the last with a periodic evaluation: every train.eval_every, and
    train.eval_points spread evenly (the last of them is the final evaluation)."""
    steps = set(range(train.eval_every, total_steps, train.eval_every)) if train.eval_every else set()
    steps |= {round(k * total_steps / train.eval_points) for k in range(1, train.eval_points)}
    return {step for step in steps if 0 < step < total_steps}


STANDARD_METRICS = frozenset({"loss", *ranking_metrics(np.ones(1)).keys()})
RESULT_METRICS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr")
VALID_METRICS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr")
PLATEAU_EVALS = 10


def plateau(workdir: epath.Path, count: int = PLATEAU_EVALS) -> dict[str, Any]:
    """Mean test HR@10 and NDCG@10 over the last `count` evaluations of the trial's metrics (periodic
    and final): the reference's plateau statistic (its last 10 epochs), steadier than one epoch."""
    last = [r for r in read_records(workdir) if "eval/test_hr@10" in r][-count:]
    if not last:
        return {}
    return {"plateau_evals": len(last),
            **{f"plateau_{k}": sum(r[f"eval/test_{k}"] for r in last) / len(last) for k in ("hr@10", "ndcg@10")}}


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    if args.config:
        try:
            config = from_json(epath.Path(args.config).read_text())
        except OSError as error:
            raise ConfigError(f"{args.config}: cannot read: {error.strerror}") from None
    else:
        name = args.preset or f"{args.model or families.DEFAULT_FAMILY}-ml1m"
        if args.preset is None and name not in PRESETS:  # a family without a preset: its defaults
            config = TrialConfig(model=ModelConfig(family=args.model))
        else:
            config = preset(name, args.model)
    overrides = list(args.set or [])
    if args.model:
        overrides.insert(0, f"model.family={args.model}")
    if args.data:
        overrides.append(f"data.name={args.data}")
    if args.steps is not None:
        overrides += [f"train.steps={args.steps}"]
    if args.epochs is not None:
        overrides += ["train.steps=0", f"train.epochs={args.epochs}"]
    for flag, key in (("seed", "train.seed"), ("checkpoint_every", "train.checkpoint_every"),
                      ("eval_every", "train.eval_every"), ("mesh", "mesh.spec")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return with_overrides(config, overrides)


def _has_progress(workdir: epath.Path) -> bool:
    """Whether a workdir holds a trial's checkpoints or result (not just its config)."""
    checkpoints = workdir / "checkpoints"
    return (workdir / "result.json").exists() or (checkpoints.is_dir() and any(checkpoints.iterdir()))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scaling.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=families.names(), help="model family (default: the preset's)")
    parser.add_argument("--data", help="dataset name or path (default: the preset's, ml-100k)")
    parser.add_argument("--workdir", required=True, help="where config, metrics, checkpoints and result go")
    parser.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default: MODEL-ml1m)")
    parser.add_argument("--config", help="a config.json to start from instead of a preset")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, help="training steps")
    group.add_argument("--epochs", type=float, help="training epochs of ceil(rows / batch) steps (a partial batch is a step, as in the reference)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0 = only at the end)")
    parser.add_argument("--eval-every", type=int, help="steps between validation evals (0 = only at the end)")
    parser.add_argument("--mesh", help='"auto" or e.g. "data=2,fsdp=2,tensor=2"')
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    parser.add_argument("--json", action="store_true", help="print result.json as the last line of stdout")
    parser.add_argument("--profile", metavar="START:STOP",
                        help="write a jax.profiler trace of training steps START..STOP to WORKDIR/profile/")
    multi = parser.add_argument_group("multi-process (one process per host)")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0 (or $SCALING_LAB_COORDINATOR)")
    multi.add_argument("--num-processes", type=int, help="processes in the job (or $SCALING_LAB_NUM_PROCESSES)")
    multi.add_argument("--process-id", type=int, help="this process's index (or $SCALING_LAB_PROCESS_ID)")
    multi.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with no arguments (TPU VM pods)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    host.keep_freed_memory_mapped()
    workdir = epath.Path(args.workdir)
    lock = workdir_lock(workdir)
    with StopRequest() as stop:
        stop_with_parent()
        try:
            return _main(args, workdir, stop, lock)
        finally:
            lock.release()


def _main(args: argparse.Namespace, workdir: epath.Path, stop: StopRequest, lock: Any) -> int:
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
        stop.rearm()  # jax.distributed installs a SIGTERM handler of its own
        config = config_from_args(args)
        profile = parse_range(args.profile)
        parse_mesh_spec(config.mesh.spec, jax.device_count())  # an impossible mesh: refused before anything is written
        saved = workdir / "config.json"
        if saved.is_file() and _has_progress(workdir):  # a config refused before training may be corrected
            previous = from_json(saved.read_text())
            if previous.trial_id != config.trial_id:
                raise ConfigError(f"{saved} holds a different trial ({previous.trial_id}, this is {config.trial_id}); "
                                  f"use another --workdir")
        if jax.process_index() == 0:
            try:
                workdir.mkdir(parents=True, exist_ok=True)
                lock.acquire()
                saved.write_text(config.to_json())
            except OSError as error:
                raise ConfigError(f"--workdir {args.workdir}: cannot write there ({error.strerror or error})") from None
        result = run(config, workdir, stop, profile, lock.check)
        distributed.finished()
        code = 0
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except WorkdirBusy as error:  # another process trains this trial: nothing of it is touched
        print(f"error: --workdir {error}", file=sys.stderr)
        return 2
    except Preempted as error:
        print(f"{error}: checkpoint committed; rerun the command to resume", file=sys.stderr)
        result = {"status": "preempted", "preempted_at_step": error.step, "checkpoint": error.step}
        code = EXIT_PREEMPTED
    except OSError as error:  # a full or read-only disk mid-run: the checkpoints written so far stay
        where = error.filename or args.workdir
        print(f"error: cannot write {where}: {error.strerror or error}", file=sys.stderr)
        result = {"status": f"failed: cannot write {where}: {error.strerror or error}"}
        code = 2
    except NonFiniteError as error:  # the last good checkpoint stays; a rerun would resume from it
        folder = workdir / "checkpoints"
        kept = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
        last_good = kept[-1] if kept else None
        print(f"error: {error}; last good checkpoint: {last_good}", file=sys.stderr)
        result = {"status": "failed", "reason": str(error), "failed_at_step": error.step,
                  "last_good_checkpoint": last_good}
        code = 1
    except Exception as error:  # a failed trial still leaves a result saying why
        traceback.print_exc(file=sys.stderr)
        result = {"status": f"failed: {type(error).__name__}: {error}".splitlines()[0]}
        code = 1
    if jax.process_index() == 0:
        try:
            write_atomically(workdir / "result.json", json.dumps(result, indent=1, sort_keys=True))
        except OSError as error:  # a result not on disk is not finished: a rerun writes it
            reason = f"cannot write {workdir / 'result.json'}: {error.strerror or error}"
            print(f"error: {reason}", file=sys.stderr)
            if result["status"] == "ok":
                result = {"status": f"failed: {reason}"}
            code = code or 2
        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            print(f"wrote {workdir / 'result.json'}: status {result['status']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
