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
import sys
import traceback
from typing import Any, Sequence

import jax
from etils import epath

from data.errors import DataError
from models.core import family as families
from scaling.config import ConfigError, ModelConfig, TrialConfig, from_json, with_overrides
from scaling.engine.mesh import make_mesh
from scaling.engine.trial import NonFiniteError, run
from scaling.presets import PRESETS, preset
from scaling.services import cpu_settings, distributed
from scaling.services.lease import WorkdirBusy, workdir_lock
from scaling.services.preemption import EXIT_PREEMPTED, Preempted, StopRequest, stop_with_parent
from scaling.services.profiling import parse_range
from scaling.services.workdir import write_atomically


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
    cpu_settings.keep_freed_memory_mapped()
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
        mesh = make_mesh(config.mesh.spec)  # an impossible mesh: refused before anything is written
        config_file = workdir / "config.json"
        if config_file.is_file() and _has_progress(workdir):  # a config refused before training may be corrected
            previous = from_json(config_file.read_text())
            if previous.trial_id != config.trial_id:
                raise ConfigError(f"{config_file} holds a different trial ({previous.trial_id}, this is "
                                  f"{config.trial_id}); use another --workdir")
        if jax.process_index() == 0:
            try:
                workdir.mkdir(parents=True, exist_ok=True)
                lock.acquire()
                config_file.write_text(config.to_json())
            except OSError as error:
                raise ConfigError(f"--workdir {args.workdir}: cannot write there ({error.strerror or error})") from None
        result = run(config, workdir, stop, profile, lock.check, mesh)
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
