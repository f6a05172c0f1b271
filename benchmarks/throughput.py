"""`python -m benchmarks.throughput`: time the training step, count its FLOPs, report MFU.

  --preset hstu-large-ml1m --data ml-100k --batch 128 --packed   the step scaling.train runs
  --config WORKDIR/config.json                                   a trial's config (its data)
  --model hstu --d-model 256 --blocks 4 --heads 4 --seq-len 200 --batch 64   random ids, full rows

--compile-only compiles the train and eval steps for --mesh (on a CPU, with that many simulated
devices) without running them and prints, from XLA's memory analysis, per-device argument_bytes,
temp_bytes, eval_temp_bytes, the train state's bytes by parts, the catalogue tables' partition
specs and FLOPs per step: whether a configuration fits, before it is submitted.

Step time is the median of --repeats steps after --warmup steps, each waited for with
block_until_ready. MFU = model FLOPs per second / peak; on a CPU the peak is the median rate of a
jitted 2048^3 matmul in the compute dtype, rated after every timed step (best of 3 calls) so that
a shared machine's load moves both alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from data.errors import DataError
from models.core import family as families
from scaling import aot
from scaling.config import ConfigError, DataConfig, TrainConfig, TrialConfig, from_json, with_overrides
from scaling.engine import flops, hardware, xla_cost
from scaling.engine.compiled import build_trainer
from scaling.engine.mesh import make_mesh
from scaling.presets import preset
from scaling.services import cpu_settings


def random_batch(rows: int, row_len: int, num_items: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Pipeline rows (data/pipeline.py's token fields) full of random items, one user per row,
    no padding, increasing timestamps; each family takes the fields it reads."""
    rng = np.random.default_rng(seed)
    items = rng.integers(1, num_items + 1, (rows, row_len)).astype(np.int32)
    times = 1_000_000 + np.cumsum(rng.integers(1, 100_000, (rows, row_len)), axis=1)
    targets = np.concatenate([items[:, 1:], np.zeros((rows, 1), np.int32)], axis=1)
    return {"items": items, "timestamps": times, "next_timestamps": np.concatenate([times[:, 1:], times[:, -1:]], axis=1),
            "targets": targets, "segment_ids": np.ones((rows, row_len), np.int32),
            "positions": np.broadcast_to(np.arange(row_len, dtype=np.int32), (rows, row_len)).copy()}


def data_batches(config: TrialConfig, count: int) -> tuple[list[dict[str, np.ndarray]], int]:
    from data.dataset import prepare_section
    from data.pipeline import PipelineConfig, train_dataset
    from data.split import leave_one_out

    prepared = prepare_section(config.data)
    split = leave_one_out(prepared.sequences, config.data.split)
    pipeline = PipelineConfig(batch_size=config.train.batch_size, row_len=config.data.row_len,
                              packed=config.data.packed, seed=config.train.seed)
    iterator = iter(train_dataset(split.train, pipeline))
    return [next(iterator) for _ in range(count)], prepared.sequences.num_items


def measure(config: TrialConfig, batches: list[dict[str, np.ndarray]], num_items: int, warmup: int,
            time_limit_bytes: float = float("inf"), profile_dir: Path | None = None,
            device_peak: tuple[float, str] | None = None) -> dict:
    """Compiles the train step and times it on `batches`, unless its compiled temporaries exceed
    time_limit_bytes (then the row has memory figures and no timings). profile_dir: one more step
    is traced there (jax.profiler), beside the compiled program's HLO (trace_step). device_peak:
    FLOP/s per device and its source, in place of scaling.engine.hardware's."""
    mesh = make_mesh(config.mesh.spec)
    trainer = build_trainer(config, num_items, mesh, total_steps=len(batches))
    rows, row_len = batches[0]["items"].shape
    times: list[float] = []
    probe = hardware.MatmulProbe(config.model.compute_dtype) if jax.devices()[0].platform == "cpu" else None
    rates: list[float] = []  # the CPU peak, measured after every timed step: both see the same load
    step_counts: list[dict[str, float]] = []
    with trainer.context():
        example = trainer.train_batch(batches[0])
        lowered = trainer.train_step.lower(trainer.abstract_state, example, jax.random.key(0))
        compiled = lowered.compile()
        memory = compiled.memory_analysis()
        temp_bytes = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
        if temp_bytes is None or temp_bytes <= time_limit_bytes:
            state = trainer.init(jax.random.key(0))
            for index, batch in enumerate(batches):
                device_batch = trainer.train_batch(batch)
                jax.block_until_ready(device_batch)
                started = time.perf_counter()
                state, metrics = compiled(state, device_batch, jax.random.key(1))  # the program compiled above
                jax.block_until_ready(metrics)
                step_counts.append({name: float(value) for name, value in metrics["counts"].items()})
                if index >= warmup:
                    times.append(time.perf_counter() - started)
                    if probe is not None:  # the best of 3 back-to-back calls: the first one after a step runs cold
                        rates.append(max(probe.rate() for _ in range(3)))
            if profile_dir is not None:
                trace_step(compiled, state, trainer.train_batch(batches[-1]), profile_dir)
    xla_flops, xla_dot_flops = xla_cost.total_flops(compiled), xla_cost.dot_flops(lowered.as_text())
    if trainer.grad_accum > 1:  # XLA counts the micro-batch loop body once: count the unrolled step
        xla_flops, xla_dot_flops = _xla_counts_in_one_batch(trainer.config, batches[0], num_items, mesh)
    if not step_counts:  # compiled only: the counts of full rows, which random-id batches are
        step_counts = [trainer.family.full_row_counts(config.model, rows, row_len)]
    model_flops = statistics.mean(flops.model_flops_from_counts(config.model, config.train, counts, num_items)
                                  for counts in step_counts)
    executed = flops.executed_flops(config.model, rows, row_len, config.train.loss, config.train.negatives, num_items,
                                    config.train)
    step_seconds = statistics.median(times) if times else None
    # Measured beside the steps (and re-cached): a peak cached on a busier machine would inflate MFU.
    peak_per_device, peak_source = device_peak or hardware.peak_flops_per_device(
        config.model.compute_dtype, remeasure=True, measured_rate=statistics.median(rates) if rates else None)
    peak = peak_per_device * jax.device_count()
    real_tokens = statistics.mean(counts["tokens"] for counts in step_counts)
    per_second = (lambda amount: amount / step_seconds) if step_seconds else (lambda amount: None)
    return {
        "model": config.model.family, **trainer.family.summary(config.model), "model_config": config.model.canonical(),
        "seq_len": row_len, "batch": rows, "packed": config.data.packed,
        "attention": getattr(config.model, "attention", None), "grad_accum": trainer.grad_accum,
        "step_seconds": step_seconds, "step_seconds_all": times,
        "train_flops_per_step": model_flops, "executed_flops_per_step": executed,
        "xla_flops_per_step": xla_flops, "xla_dot_flops_per_step": xla_dot_flops,
        "mfu": per_second(model_flops / peak),
        "executed_utilisation": per_second(executed / peak) if executed is not None else None,
        "tokens_per_second": per_second(real_tokens),
        "peak_flops": peak, "peak_flops_source": peak_source, "device_kind": jax.devices()[0].device_kind,
        "peak_flops_all": [rate * jax.process_count() for rate in rates],
        "devices": jax.device_count(), "padding_fraction": 1.0 - real_tokens / (rows * row_len),
        "temp_bytes": temp_bytes,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "flop_convention": flops.FLOP_CONVENTION,
    }


HLO_FILE = "train_step.hlo.txt"


def trace_step(compiled: jax.stages.Compiled, state: dict, device_batch: dict, folder: Path) -> None:
    """One step of the compiled train step under jax.profiler.trace into `folder`, and the
    program's optimised HLO in folder/HLO_FILE (its op metadata names what each traced op computes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HLO_FILE).write_text(compiled.as_text())
    with jax.profiler.trace(str(folder)):
        jax.block_until_ready(compiled(state, device_batch, jax.random.key(2)))


def _xla_counts_in_one_batch(config: TrialConfig, batch: dict[str, np.ndarray], num_items: int, mesh) -> tuple[float, float]:
    """XLA's total and dot FLOPs of the same step with the whole batch in one micro-batch."""
    whole = dataclasses.replace(config, train=dataclasses.replace(config.train, grad_accum=1))
    trainer = build_trainer(whole, num_items, mesh, total_steps=1)
    with trainer.context():
        lowered = trainer.train_step.lower(trainer.abstract_state, trainer.train_batch(batch), jax.random.key(0))
        return xla_cost.total_flops(lowered.compile()), xla_cost.dot_flops(lowered.as_text())


SWEEP_COLUMNS = ("attention", "d_model", "seq_len", "batch", "grad_accum", "step_seconds", "tokens_per_second", "mfu",
                 "temp_bytes", "max_rss_bytes")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict], columns: Sequence[str] = SWEEP_COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def run_sweep(args: argparse.Namespace) -> list[dict]:
    """Every (attention, d_model, seq_len) of the lists, random-id mode; one JSON line each to --out.
    A step whose compiled temporaries exceed --time-limit-bytes is compiled (memory) but not run."""
    rows = []
    grid = [(a, d, n) for a in _names(args.attentions) for d in _ints(args.d_models) for n in _ints(args.seq_lens)]
    for index, (attention, d_model, seq_len) in enumerate(grid, 1):
        point = argparse.Namespace(**{**vars(args), "attention": attention, "d_model": d_model, "seq_len": seq_len})
        config = config_from(point)
        batch, num_items = config.train.batch_size, args.num_items or DEFAULT_NUM_ITEMS
        print(f"[{index}/{len(grid)}] {attention} d{d_model} seq {seq_len} batch {batch}", file=sys.stderr)
        count = args.warmup + args.repeats
        batches = [random_batch(batch, seq_len, num_items, seed) for seed in range(count)]
        row = measure(config, batches, num_items, args.warmup, args.time_limit_bytes)
        rows.append(row)
        print(markdown_table([row]).splitlines()[-1], file=sys.stderr)
        if args.out:
            with open(args.out, "a") as out:
                out.write(json.dumps(row, sort_keys=True) + "\n")
    return rows


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _model_overrides(family: str, wanted: dict, asked: set[str]) -> list[str]:
    """`model.KEY=VALUE` for the wanted keys the family's config has; a key it lacks is passed
    on (and refused by the config) only when the user asked for a non-default value."""
    fields = {f.name for f in dataclasses.fields(families.get(family).config_class)}
    return [f"model.{key}={value}" for key, value in wanted.items() if key in fields or key in asked]


def config_from(args: argparse.Namespace) -> TrialConfig:
    asked = {key for key, given in (("attention", args.attention != "dense"), ("compute_dtype", args.dtype != "float32"))
             if given}
    if args.config:
        try:
            config = from_json(open(args.config).read())
        except OSError as error:
            raise ConfigError(f"--config {args.config}: cannot read: {error.strerror}") from None
        overrides = [f"train.batch_size={args.batch}"] if args.batch is not None else []
        if args.data:
            overrides.append(f"data.name={args.data}")
    elif args.preset:
        config = preset(args.preset, args.model)
        overrides = [f"train.batch_size={args.batch or 64}", f"data.packed={args.packed}"]
        overrides += _model_overrides(config.model.family, {"attention": args.attention,
                                                            "attention_block": args.attention_block}, asked)
        if args.data:
            overrides.append(f"data.name={args.data}")
    else:
        name = args.model or families.DEFAULT_FAMILY
        config = TrialConfig(data=DataConfig(packed=args.packed),
                             train=TrainConfig(batch_size=args.batch or 64, negatives=args.negatives))
        wanted = {"d_model": args.d_model, "blocks": args.blocks, "heads": args.heads, "max_positions": args.seq_len,
                  "dropout": 0.0, "input_dropout": 0.0, "compute_dtype": args.dtype, "attention": args.attention,
                  "attention_block": args.attention_block}
        # the row length with the model, in one step: rows longer than the default positions are valid
        overrides = [f"data.max_len={args.seq_len - 1}", f"model.family={name}", *_model_overrides(name, wanted, asked)]
    if args.mesh is not None or not args.config:
        overrides.append(f"mesh.spec={args.mesh or 'auto'}")
    return with_overrides(config, overrides + list(args.set or []))


DEFAULT_NUM_ITEMS = 3706  # ML-1M's catalogue


def batches_for(args: argparse.Namespace, config: TrialConfig) -> tuple[list[dict[str, np.ndarray]], int]:
    """(--warmup + --repeats host batches, catalogue size): the data's with --preset or --config,
    else random ids over --num-items."""
    count = args.warmup + args.repeats
    if args.preset or args.config:
        return data_batches(config, count)
    num_items = args.num_items or DEFAULT_NUM_ITEMS
    return [random_batch(config.train.batch_size, args.seq_len, num_items, seed) for seed in range(count)], num_items


def _config_mesh(path: str | None) -> str:
    """The mesh spec a --config file asks for, to simulate its devices ("auto" when it cannot be
    read: config_from then names the problem)."""
    try:
        return str(json.loads(Path(path).read_text())["mesh"]["spec"]) if path else "auto"
    except (OSError, ValueError, KeyError, TypeError):
        return "auto"


def compile_only(args: argparse.Namespace) -> int:
    """--compile-only: scaling.aot.compile_only of the configured step on the mesh."""
    try:
        config = config_from(args)
        if args.num_items:
            num_items = args.num_items
        elif args.preset or args.config:
            from data.dataset import prepare_section

            num_items = prepare_section(config.data).sequences.num_items
        else:
            num_items = DEFAULT_NUM_ITEMS
        mesh = make_mesh(config.mesh.spec)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"compiling the train and eval steps of {config.model.family} for mesh {dict(mesh.shape)}, "
          f"{num_items} items", file=sys.stderr)
    try:
        result = aot.compile_only(config, num_items, mesh)
    except ConfigError as error:  # e.g. a batch the mesh cannot split
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key in ("argument_bytes", "temp_bytes", "eval_temp_bytes", "params_bytes", "optimizer_bytes",
                    "train_flops_per_step", "xla_flops_per_step"):
            print(f"{key:<24} {result[key]:.4g}" if result[key] is not None else f"{key:<24} -")
        for path, spec in result["catalogue_tables"].items():
            print(f"{path:<24} {spec}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (benchmarks.accelerator describes its shapes with them)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="a scaling.train preset; with --data, time its real batches")
    parser.add_argument("--config", help="a trial's config.json (its data, batch and mesh unless flags say otherwise)")
    parser.add_argument("--data", help="dataset for --preset (default: the preset's)")
    parser.add_argument("--model", choices=families.names())
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=200, help="tokens per row (random-id mode)")
    parser.add_argument("--batch", type=int, help="rows per step (default 64; a --config's own)")
    parser.add_argument("--negatives", type=int, default=128)
    parser.add_argument("--num-items", type=int,
                        help="catalogue size (random-id mode: default 3706; with --preset or --config: instead of the data's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--packed", action="store_true")
    parser.add_argument("--attention", choices=["dense", "blockwise"], default="dense",
                        help="model.attention, for families that have it (HSTU)")
    parser.add_argument("--attention-block", type=int, default=256, help="queries per block (blockwise)")
    parser.add_argument("--mesh", help='"auto" (default) or e.g. "data=8"; on a CPU, that many devices are simulated')
    parser.add_argument("--compile-only", action="store_true",
                        help="compile the train and eval steps for the mesh, run nothing, print memory and FLOPs")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    sweep = parser.add_argument_group("--sweep: a table over attention paths, widths and lengths (random ids)")
    sweep.add_argument("--sweep", action="store_true")
    sweep.add_argument("--attentions", default="dense,blockwise")
    sweep.add_argument("--d-models", default="256")
    sweep.add_argument("--seq-lens", default="512,1024,2048,4096,8192")
    sweep.add_argument("--time-limit-bytes", type=float, default=8e9,
                       help="compile only (memory, no timing) when the step's temporaries exceed this")
    sweep.add_argument("--out", help="append one JSON line per point to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cpu_settings.keep_freed_memory_mapped()
    cpu_settings.simulate_cpu_devices(args.mesh or _config_mesh(args.config))
    if args.compile_only:
        return compile_only(args)
    if args.sweep:
        try:
            rows = run_sweep(args)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(json.dumps({"rows": rows}, sort_keys=True) if args.json else markdown_table(rows))
        return 0
    try:
        config = config_from(args)
        count = args.warmup + args.repeats
        batches, num_items = batches_for(args, config)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = " ".join(f"{k}={v}" for k, v in families.of(config.model).summary(config.model).items())
    print(f"timing {count} steps of {config.model.family} {size} batch {config.train.batch_size}", file=sys.stderr)
    try:
        result = measure(config, batches, num_items, args.warmup)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for key in ("step_seconds", "train_flops_per_step", "executed_flops_per_step", "xla_flops_per_step", "mfu",
                    "tokens_per_second", "peak_flops", "padding_fraction"):
            print(f"{key:<24} {result[key]:.4g}" if result[key] is not None else f"{key:<24} -")
    return 0


if __name__ == "__main__":
    sys.exit(main())
