"""One trial from its config to its result: the data, the compiled steps, a restored or fresh state,
the training loop with its hooks, the final evaluation, the result record.

WORKDIR/config.json     the trial configuration (its hash is the trial id; written by the command)
WORKDIR/metrics.jsonl   one line per log step ("learning/", "perf/") and per eval ("eval/")
WORKDIR/progress.json   step, total, loss, tokens/s, MFU, ETA and phase while it runs (sweeps watch it)
WORKDIR/events.out.*    TensorBoard scalars of metrics.jsonl
WORKDIR/checkpoints/    orbax: train state + data iterator state + the evaluations so far; a rerun
                        resumes from the last that restores
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from typing import Any, Callable

import jax
from etils import epath

from data.dataset import PreparedData, prepare_section
from data.floors import loss_floors
from data.pipeline import PipelineConfig, epoch_plan, train_dataset
from data.split import LeaveOneOut, eval_subset, leave_one_out
from scaling.config import TrialConfig
from scaling.engine import checkpoint, flops, hardware
from scaling.engine.compiled import Trainer, build_trainer
from scaling.engine.evaluation import evaluate, evaluation_steps
from scaling.engine.loop import Hook, run_steps
from scaling.engine.mesh import logical_names, make_mesh
from scaling.engine.meter import StepMeter
from scaling.engine.result import result_record
from scaling.engine.selection import Evaluations
from scaling.services.metrics_log import MetricsLog
from scaling.services.preemption import Preempted, StopRequest
from scaling.services.profiling import StepProfiler
from scaling.services.progress import TrialProgress
from scaling.services.tensorboard import EventLog


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


@dataclasses.dataclass(frozen=True)
class TrialData:
    """The trial's data: the split, the pipeline of its training rows, and the run's length."""

    prepared: PreparedData
    split: LeaveOneOut
    pipeline: PipelineConfig
    floors: dict[str, float]  # a synthetic source's irreducible losses of the evaluated events
    steps_per_epoch: int
    total_steps: int

    @property
    def num_items(self) -> int:
        return self.prepared.sequences.num_items


def trial_data(config: TrialConfig) -> TrialData:
    data, train = config.data, config.train
    prepared = prepare_section(data)
    split = eval_subset(leave_one_out(prepared.sequences, data.split), data.eval_users)
    seen = min(data.max_len, data.row_len)  # the history items an evaluated target sees (eval_dataset)
    floors = loss_floors(data.name, {"": split.valid, "test_": split.test}, seen)
    pipeline = PipelineConfig(batch_size=train.batch_size, row_len=data.row_len, packed=data.packed,
                              window=data.window, whole_epochs=data.whole_epochs, seed=train.seed)
    rows_per_epoch = epoch_plan(split.train, pipeline, 0).num_rows
    steps_per_epoch = math.ceil(rows_per_epoch / train.batch_size)  # the reference counts a partial batch
    total_steps = train.steps or math.ceil(train.epochs * steps_per_epoch)
    log(f"data {data.name}: {split.train.num_users} users, {prepared.sequences.num_items} items, "
        f"{rows_per_epoch} rows/epoch, {total_steps} steps")
    return TrialData(prepared, split, pipeline, floors, steps_per_epoch, total_steps)


def run(config: TrialConfig, workdir: epath.Path, stop: StopRequest | None = None,
        profile: tuple[int, int] | None = None, still_owner: Callable[[], None] = lambda: None,
        mesh: Any = None) -> dict[str, Any]:
    """Train one trial to completion (resuming if WORKDIR has checkpoints); returns result.json.
    Raises Preempted after saving the current step when `stop` is requested (SIGTERM).
    profile: (START, STOP) training steps to trace into WORKDIR/profile/.
    still_owner: raises (WorkdirLost) once another process owns the workdir; checked every step.
    mesh: the trial's mesh when the caller made it (default: made from config.mesh.spec)."""
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh if mesh is not None else make_mesh(config.mesh.spec)  # before any data is read
    data = trial_data(config)
    trainer = build_trainer(config, data.num_items, mesh, data.total_steps, prepared=data.prepared, log=log)
    if jax.process_index() == 0:
        axes_json = json.dumps(logical_names(trainer.boxed_params), indent=1, sort_keys=True)
        (workdir / "param_axes.json").write_text(axes_json)
    with trainer.context():
        trial = TrialRun(config, workdir, trainer, data, stop or StopRequest(), profile, still_owner, started)
        try:
            trial.train()
            valid, test = trial.final_evaluation()
        finally:  # an interrupted run still completes the checkpoint it started
            trial.close()
    this_run_seconds = time.perf_counter() - started
    return result_record(config, trainer, trial.meter, trial.evaluations, steps=trial.step,
                         steps_per_epoch=data.steps_per_epoch, valid=valid, test=test, floors=data.floors,
                         wall_seconds=trial.earlier_seconds + this_run_seconds, this_run_seconds=this_run_seconds,
                         peak=(trial.peak_flops, trial.peak_source), resumed_from=trial.resumed_from)


class TrialRun:
    """A trial's state while it trains, and its hooks. Restores the last checkpoint that restores,
    or starts afresh; the metrics log drops what a killed run logged past that checkpoint."""

    def __init__(self, config: TrialConfig, workdir: epath.Path, trainer: Trainer, data: TrialData,
                 stop: StopRequest, profile: tuple[int, int] | None, still_owner: Callable[[], None], started: float):
        self.config, self.workdir, self.trainer, self.data = config, workdir, trainer, data
        self.stop, self.still_owner, self.started = stop, still_owner, started
        train = config.train
        self.checkpoints = checkpoint.manager(workdir / "checkpoints", train.keep_checkpoints)
        self.iterator = iter(train_dataset(data.split.train, data.pipeline))
        target = checkpoint.abstract_like(trainer.abstract_state, trainer.shardings)
        restored = checkpoint.restore_latest(self.checkpoints, target, log)
        self.resumed_from = restored[0] if restored else None
        first_process = jax.process_index() == 0
        self.events = EventLog(workdir, self.resumed_from, enabled=first_process)
        self.metrics_log = MetricsLog(workdir, self.events)
        init_key, self.step_key = jax.random.split(jax.random.key(train.seed))
        resume_json: dict[str, Any] = {}  # what the checkpoint keeps beside the state (resume_state)
        if restored:
            _, self.state, resume_json = restored
            self.iterator.set_state(resume_json["iterator"])
            logged = self.metrics_log.keep_until(self.resumed_from,
                                                 evaluation_at_step=self.resumed_from < data.total_steps)
            log(f"resumed from step {self.resumed_from}")
        else:
            self.state = trainer.init(init_key)
            logged = self.metrics_log.keep_until(0)
        self.evaluations = Evaluations.from_state(resume_json, logged)
        # wall time of the runs this one resumes, to their checkpoint
        self.earlier_seconds = float(resume_json.get("wall_seconds", 0.0))
        peak_per_device, self.peak_source = hardware.peak_flops_per_device(config.model.compute_dtype)
        self.peak_flops = peak_per_device * jax.device_count()
        self.step = int(self.state["step"])
        self.meter = StepMeter(first_timed_step=self.step + 2, log_every=train.log_every,
                               total_steps=data.total_steps, peak_flops=self.peak_flops,
                               tokens=resume_json.get("tokens", 0.0), flops=resume_json.get("train_flops", 0.0))
        if restored:
            self.meter.final_loss = float(resume_json.get("final_train_loss", self.meter.final_loss))
        self.unread: list[tuple[int, dict]] = []  # steps dispatched whose metrics are not read yet
        self.metrics: dict = {}  # of the step just taken (device arrays)
        self.checkpointed_step: int | None = None
        self.display = TrialProgress(workdir, data.total_steps, enabled=first_process)
        # every process traces its own devices, a file per host
        self.profiler = StepProfiler(profile, workdir / "profile")

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self) -> None:
        checkpoint_every = self.config.train.checkpoint_every
        hooks = [
            Hook("profile", lambda step: self.profiler.after(step, self.metrics)),
            Hook("log", self.log_ready),
            # an evaluation comes before a checkpoint of the same step, which then holds its selection
            Hook("evaluate", self.evaluate, every=0, at=frozenset(evaluation_steps(self.config.train,
                                                                                  self.data.total_steps))),
            Hook("checkpoint", self.save, every=checkpoint_every),
            Hook("preemption", self.stop_if_requested),
        ]
        before = [lambda step: self.still_owner(), self.profiler.before]
        self.step = run_steps(self.step, self.data.total_steps, self.take_step, hooks, before)
        self.read_metrics()
        if self.step > (self.resumed_from or 0) and (not checkpoint_every or self.step % checkpoint_every):
            self.save(self.step)

    def take_step(self, step: int) -> None:
        self.state, self.metrics = self.trainer.train_step(self.state, self.trainer.train_batch(next(self.iterator)),
                                                          self.step_key)

    def final_evaluation(self) -> tuple[dict[str, float], dict[str, float]]:
        self.display.phase("eval")
        test = evaluate(self.trainer, self.state["params"], self.data.split.test)
        valid = evaluate(self.trainer, self.state["params"], self.data.split.valid)
        self.write_evaluation(self.step, valid, test, "done")
        self.metrics_log.flush()
        return valid, test

    def close(self) -> None:
        self.checkpoints.wait_until_finished()
        self.checkpoints.close()
        self.profiler.close()
        self.events.close()
        self.display.close()

    # ---- hooks ------------------------------------------------------------------------------------
    def log_ready(self, step: int) -> None:
        """Log the steps whose metrics are ready (the previous one: reading a step's metrics after
        the next is dispatched keeps the device busy), then queue this one's."""
        self.read_metrics()
        self.unread.append((step, self.metrics))

    def read_metrics(self) -> None:
        """Account for every dispatched step not read yet (waiting for it): the meter, and at log
        steps the metrics log, TensorBoard and progress.json."""
        while self.unread:
            step, metrics = self.unread.pop()
            check_finite(step, metrics)
            counts = {name: float(value) for name, value in metrics["counts"].items()}
            step_flops = flops.model_flops_from_counts(self.config.model, self.config.train, counts,
                                                       self.data.num_items)
            record = self.meter.record(step, metrics, counts["tokens"], step_flops)
            if record is not None:
                self.metrics_log.write(record)
                self.display.train(record)

    def evaluate(self, step: int) -> None:
        self.read_metrics()
        started = time.perf_counter()
        self.display.phase("eval")
        params, split = self.state["params"], self.data.split
        self.write_evaluation(step, evaluate(self.trainer, params, split.valid),
                              evaluate(self.trainer, params, split.test), "train")
        self.meter.exclude(time.perf_counter() - started)

    def write_evaluation(self, step: int, valid: dict, test: dict, then: str) -> None:
        """An eval record, at the step's cumulative tokens and FLOPs (the training curves' x-axes)."""
        self.evaluations.offer(step, valid, test)
        self.metrics_log.write({"step": step, "progress/tokens": self.meter.tokens,
                                "progress/train_flops": self.meter.flops,
                                **{f"eval/valid_{k}": v for k, v in valid.items()},
                                **{f"eval/test_{k}": v for k, v in test.items()}})
        shown = lambda m: " ".join(f"{k} {m[k]:.4f}" for k in ("loss", "hr@10", "ndcg@10") if k in m)
        self.display.phase(then, f"eval step {step}: valid {shown(valid)}, test {shown(test)}")

    def save(self, step: int) -> None:
        """A checkpoint of the state and of what a resumed run needs besides it. The records up to
        it are written first: a failed write of them leaves the step without a checkpoint, so a
        resumed run logs them again."""
        self.read_metrics()
        self.metrics_log.flush()
        checkpoint.save(self.checkpoints, step, self.state, self.resume_state())
        self.events.flush()
        self.checkpointed_step = step

    def resume_state(self) -> dict[str, Any]:
        return {"iterator": self.iterator.get_state(), "tokens": self.meter.tokens, "train_flops": self.meter.flops,
                "final_train_loss": self.meter.final_loss,  # what a run resumed at the last step reports
                **self.evaluations.to_state(),
                "wall_seconds": self.earlier_seconds + time.perf_counter() - self.started}

    def stop_if_requested(self, step: int) -> None:
        """On a preemption notice (SIGTERM): save this step unless just saved, and stop."""
        if not self.stop.requested():
            return
        if self.checkpointed_step != step:
            self.save(step)
        log(f"SIGTERM: saving step {step} and stopping")
        raise Preempted(step)
