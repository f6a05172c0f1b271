"""`python -m benchmarks.accelerator --out DIR [--small] [--json]`: prove the lab on the devices JAX
sees (a GPU, a TPU, or the CPU), in minutes, and measure it there. Writes DIR/accelerator.json and
DIR/accelerator.md:

  - the platform, device kind and versions; bf16 and fp32 matmul rates measured beside the
    datasheet peak (scaling/engine/hardware.py; a CPU has none: its measured rate is its peak);
  - the training step (bf16 compute, random ids over a synthetic catalogue of 100k items) of HSTU
    large (D 512, 8 blocks, L 1024, batch 32, packed rows), HSTU long (D 256, 4 blocks, L 8192,
    batch 4, blockwise attention), HSTU mid (D 256, 4 blocks, L 200) at batch 64 and 1024, SASRec
    at the mid shape, and the tiger-beauty preset (Amazon Beauty when SCALING_LAB_DATA has it,
    else a synthetic catalogue of its shape): step time, tokens/s, model and XLA FLOPs, MFU
    against the datasheet peak with the measured matmul rate beside. Each is
    `python -m benchmarks.throughput FLAGS` (the flags are in the JSON); one that fails (out of
    memory) is a row saying why;
  - a jax.profiler trace of one HSTU large step (DIR/profile/) and the share of its device time
    in attention, other matmuls, embedding lookups + negatives + loss, the optimizer and the
    rest, by the jax.named_scope names the models and the train step carry;
  - an end-to-end smoke: a 2-trial sweep with its report (`python -m sweeps run`), and an export
    + serve round trip of one of its trials on this platform, each with pass/fail and seconds.

--small runs all of it at toy sizes (a CPU test runs it). Exit status: 0 when the smoke passed
(a failed shape is a finding, not a failure), 1 when it did not, 2 for bad input.

On a GPU machine whose image has JAX preinstalled and no internet: on a machine with internet,
`bash install.sh --download DIR` fills DIR with the lab's wheels (cp312, manylinux x86_64); copy DIR
and this checkout over, then `bash install.sh --offline DIR --keep-jax` installs them into the
lab's venv with the index off, keeping the image's jax and CUDA plugin; then
`. .venv/bin/activate && python -m benchmarks.accelerator --out results/h100`. Nothing here needs
the network (the smoke sweep's data is generated; tiger-beauty falls back to synthetic data).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from benchmarks.accelerator_shapes import SHAPES, SMALL_SHAPES, Shape

REPO_ROOT = Path(__file__).resolve().parents[1]
# Amazon Beauty 5-core's shape (22,363 users, 12,101 items, 8.9 events a user); popularity flat
# enough (zipf 0.3) that every item occurs.
SYNTHETIC_BEAUTY = "synthetic:users=22363,items=12101,mean_events=8.9,zipf=0.3,seed=0"
BEAUTY = "amazon-beauty"
SMOKE_SPEC = '''"""benchmarks.accelerator's smoke sweep: two tiny trials on generated data."""
from scaling.config import with_overrides
from scaling.presets import preset
from sweeps.spec import Sweep, axis

BASE = with_overrides(preset("tiny"), ["data.name=synthetic:users=200,items=100,seed=0", "train.steps=4",
                                       "train.log_every=2", "train.eval_every=4", "train.checkpoint_every=4"])
SWEEP = Sweep("accelerator_smoke", BASE, axis("size", "model.d_model", [8, 16]))
'''
SERVE_K = 5
# --small: toy steps, where compiling dominates; LLVM at -O0 compiles XLA:CPU programs in half the
# time and computes the same (XLA's own passes are unchanged; tests/conftest.py does the same).
SMALL_COMPILE_FLAG = "--xla_backend_optimization_level=0"


# Profile attribution: jax.named_scope names (models/core/family.py, scaling/engine/step_functions.py) -> part.
OPTIMIZER, ATTENTION, LOOKUPS, MATMULS, OTHER = (
    "optimizer", "attention", "embedding lookups, negatives, loss", "other matmuls", "other")
PARTS = (ATTENTION, MATMULS, LOOKUPS, OPTIMIZER, OTHER)
_MATMUL = re.compile(r"\b(?:dot_general|conv_general_dilated)$")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


# ---- what the device is -------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "jax-cuda12-plugin", "jax-cuda13-plugin",
             "libtpu")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def environment() -> dict[str, Any]:
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count(),
            "platform_version": str(getattr(device.client, "platform_version", "")), "versions": _versions()}


def matmul_rates(platform: str, device_kind: str, small: bool) -> dict[str, Any]:
    """Measured size^3 matmul FLOP/s per dtype beside the datasheet peak (None on a CPU or for a
    device kind the table lacks)."""
    from scaling.engine import hardware

    size = 1024 if small else 2048 if platform == "cpu" else 8192
    rates: dict[str, Any] = {"size": size}
    for dtype in ("bfloat16", "float32"):
        measured = hardware.measure_matmul_rate(dtype, size)
        try:
            sheet = hardware.datasheet_peak(device_kind, dtype) if platform != "cpu" else None
        except hardware.UnknownDevice:
            sheet = None
        rates[dtype] = {"measured": measured, "datasheet": sheet, "of_datasheet": measured / sheet if sheet else None}
        _log(f"matmul {size}^3 {dtype}: {measured / 1e12:.3g} TFLOP/s measured"
             + (f", datasheet {sheet / 1e12:.4g}" if sheet else ", no datasheet peak"))
    return rates


def mfu_peak(platform: str, rates: dict[str, Any]) -> tuple[float, str] | None:
    """(FLOP/s, source) for the shapes' MFU on an accelerator the datasheet table lacks: its measured
    bf16 rate. None where benchmarks.throughput's own peak applies: the datasheet's, or on a CPU
    the rate it re-measures beside every step."""
    if platform == "cpu" or rates["bfloat16"]["datasheet"]:
        return None
    return rates["bfloat16"]["measured"], f"measured:{rates['size']}^3 matmul:bfloat16 (no datasheet entry)"


# ---- training steps -----------------------------------------------------------------------------

def beauty_data() -> str:
    """Amazon Beauty where it can be read without a download, else a synthetic catalogue of its shape."""
    from data.sources import readable_offline

    return BEAUTY if readable_offline(BEAUTY) else SYNTHETIC_BEAUTY


def shape_flags(shape: Shape, warmup: int, repeats: int, data: str) -> list[str]:
    flags = [*shape.flags, "--warmup", str(warmup), "--repeats", str(repeats)]
    return flags + ["--data", data] if "--preset" in flags else flags


def run_shape(shape: Shape, flags: list[str], profile_dir: Path | None, peak: tuple[float, str] | None,
              measured_rates: dict[str, Any]) -> dict[str, Any]:
    """benchmarks.throughput's measurement of one shape; a failure is the row's "error"."""
    from benchmarks import throughput

    started = time.perf_counter()
    row: dict[str, Any] = {"shape": shape.name, "command": "python -m benchmarks.throughput " + shlex.join(flags)}
    try:
        args = throughput.build_parser().parse_args(flags)
        config = throughput.config_from(args)
        batches, num_items = throughput.batches_for(args, config)
        row.update(throughput.measure(config, batches, num_items, args.warmup, profile_dir=profile_dir,
                                      device_peak=peak))
        row["data"] = config.data.name if args.preset else f"random ids over {num_items} items"
        rate = measured_rates[config.model.compute_dtype]["measured"] * row["devices"]
        row["mfu_vs_measured"] = row["mfu"] * row["peak_flops"] / rate if row["mfu"] is not None else None
    except Exception as error:  # noqa: BLE001 -- a shape that fails (out of memory) is a row saying why
        row["error"] = _one_line(error)
    row["wall_seconds"] = time.perf_counter() - started
    gc.collect()
    return row


# ---- the profile --------------------------------------------------------------------------------

def part_of(op_name: str) -> str:
    """The part of a step an op belongs to, from its JAX name stack (op_name metadata)."""
    from models.core.family import ATTENTION_SCOPE, EMBEDDING_SCOPE, LOSS_SCOPE, NEGATIVES_SCOPE
    from scaling.engine.step_functions import OPTIMIZER_SCOPE

    words = set(re.findall(r"[A-Za-z_]\w*", op_name))  # "transpose(jvp(attention))" holds "attention"
    if OPTIMIZER_SCOPE in words:
        return OPTIMIZER
    if ATTENTION_SCOPE in words:
        return ATTENTION
    if words & {EMBEDDING_SCOPE, NEGATIVES_SCOPE, LOSS_SCOPE}:
        return LOOKUPS
    return MATMULS if _MATMUL.search(op_name) else OTHER


def profile_shares(ops: Iterable[tuple[str, float]]) -> dict[str, float]:
    """{part: share of the time} of (op name stack, seconds) pairs; the shares sum to 1."""
    totals = dict.fromkeys(PARTS, 0.0)
    for op_name, seconds in ops:
        totals[part_of(op_name)] += seconds
    total = sum(totals.values())
    if total <= 0:
        raise ValueError("no op time to attribute")
    return {part: seconds / total for part, seconds in totals.items()}


def read_profile(folder: Path, step_seconds: float | None, top: int = 8) -> dict[str, Any]:
    """The traced step's device time by part, and its costliest ops; {"error"} when unreadable."""
    from benchmarks.throughput import HLO_FILE
    from scaling.services import profiling

    try:
        hlo = (folder / HLO_FILE).read_text()
        stands_for = profiling.hlo_op_names(hlo)
        times = profiling.op_times(folder, profiling.hlo_module_name(hlo))
        named = [(stands_for.get(op, op), seconds) for op, seconds in times]
        shares = profile_shares(named)
    except Exception as error:  # noqa: BLE001 -- the rest of the page does not depend on the trace
        return {"trace": str(folder), "error": _one_line(error)}
    by_op: dict[str, float] = {}
    for op, seconds in times:
        by_op[op] = by_op.get(op, 0.0) + seconds
    costliest = sorted(by_op.items(), key=lambda item: -item[1])[:top]
    return {"trace": str(folder), "shares": shares, "op_seconds": sum(by_op.values()), "ops": len(by_op),
            "step_seconds": step_seconds,
            "top_ops": [{"op": op, "seconds": seconds, "part": part_of(stands_for.get(op, op)),
                         "computes": stands_for.get(op, "")} for op, seconds in costliest]}


# ---- end-to-end smoke ---------------------------------------------------------------------------

def sweep_smoke(folder: Path) -> dict[str, Any]:
    """`python -m sweeps run` of SMOKE_SPEC (2 trials and the report) into folder/sweep."""
    started = time.perf_counter()
    shutil.rmtree(folder / "sweep", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "smoke_sweep.py"
    spec.write_text(SMOKE_SPEC)
    command = [sys.executable, "-m", "sweeps", "run", str(spec), "--workdir", str(folder / "sweep"), "--json"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    report = folder / "sweep" / "report" / "report.md"
    ok = done.returncode == 0 and summary.get("ok") == 2 and report.is_file()
    error = None if ok else ((done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])[:300]
    return {"ok": ok, "seconds": time.perf_counter() - started, "trials_ok": summary.get("ok"),
            "report": str(report) if report.is_file() else None, "error": error}


def export_smoke(sweep_dir: Path, out: Path) -> dict[str, Any]:
    """scaling.export of a smoke trial for this platform, loaded by scaling.serve: its answers
    against the same serving function run in process."""
    import jax
    import numpy as np

    from models.core.serving import portable_kernels
    from scaling import export, serve

    started = time.perf_counter()
    trial_dir = next(p.parent for p in sorted(sweep_dir.glob("trials/*/checkpoints")))
    shutil.rmtree(out, ignore_errors=True)
    export.export_trial(trial_dir, out, "last", k=SERVE_K, platforms=[serve.current_platform()])
    exported = time.perf_counter()
    model = serve.ExportedModel(out)
    requests = [serve.Request(model.item_ids[start : start + 6]) for start in range(0, 48, 6)]
    answers = model.recommend(requests, k=SERVE_K)
    arrays, _ = model.arrays(requests)
    items, scores = model.call(*arrays)
    trial = export.load_trial(trial_dir)
    with portable_kernels():
        expected = jax.jit(export.serving_function(trial, SERVE_K))(export.flatten(trial.params), *arrays)
    same = np.array_equal(items, np.asarray(expected[0])) and np.allclose(scores, np.asarray(expected[1]),
                                                                          rtol=1e-5, atol=1e-6)
    full = all(len(answer["items"]) == SERVE_K for answer in answers)
    error = None if same and full else ("exported answers differ from in-process inference" if not same
                                        else "an answer has fewer than k items")
    return {"ok": error is None, "seconds": time.perf_counter() - started, "export_seconds": exported - started,
            "platform": serve.current_platform(), "requests": len(requests), "export": str(out), "error": error}


def checked(name: str, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """check()'s result, or a failed one saying why; logged either way."""
    _log(f"smoke: {name}")
    started = time.perf_counter()
    try:
        result = check()
    except Exception as error:  # noqa: BLE001 -- recorded as a failed check
        result = {"ok": False, "seconds": time.perf_counter() - started, "error": _one_line(error)}
    _log(f"smoke: {name} {'ok' if result['ok'] else 'FAILED: ' + str(result['error'])} ({result['seconds']:.1f} s)")
    return result


# ---- the page -----------------------------------------------------------------------------------

def _num(value: Any, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value / scale:.{digits}g}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _matmul_lines(result: dict[str, Any]) -> list[str]:
    rates = result["matmul"]
    header = ("dtype", f"measured TFLOP/s ({rates['size']}^3 matmul)", "datasheet TFLOP/s", "measured / datasheet")
    lines = _table(header, [(dtype, _num(rates[dtype]["measured"], 1e12), _num(rates[dtype]["datasheet"], 1e12, 4),
                             _percent(rates[dtype]["of_datasheet"])) for dtype in ("bfloat16", "float32")])
    if result["platform"] == "cpu":
        lines += ["", "A CPU has no datasheet peak: the MFU column below is against the measured bf16 rate of a "
                      "2048^3 matmul, re-measured beside every timed step under the same load "
                      "(benchmarks/throughput.py); the next column against the rate above, measured once."]
    elif not rates["bfloat16"]["datasheet"]:
        lines += ["", f"No datasheet peak for {result['device_kind']} in scaling/engine/hardware.py: MFU below is against "
                      f"the measured bf16 rate."]
    return lines


def _shape_lines(rows: list[dict[str, Any]]) -> list[str]:
    header = ("shape", "model", "d", "blocks", "L", "batch", "data", "step ms", "tokens/s", "model FLOP/step",
              "XLA FLOP/step", "MFU", "MFU vs measured", "wall s")
    cells = []
    for row in rows:
        if "error" in row:
            blank = [""] * (len(header) - 3)
            cells.append((row["shape"], f"failed: {row['error']}", *blank, _num(row["wall_seconds"])))
            continue
        blocks = row.get("blocks") or "+".join(str(row["model_config"].get(k, "?"))
                                                for k in ("encoder_blocks", "decoder_blocks"))
        cells.append((row["shape"], row["model"], str(row.get("d_model", "-")), str(blocks), str(row["seq_len"]),
                      str(row["batch"]) + (" packed" if row["packed"] else ""), row["data"],
                      _num(row["step_seconds"], 1e-3), _num(row["tokens_per_second"]),
                      _num(row["train_flops_per_step"]), _num(row["xla_flops_per_step"]), _percent(row["mfu"]),
                      _percent(row.get("mfu_vs_measured")), _num(row["wall_seconds"])))
    return _table(header, cells)


def _data_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What stands in for a preset's data or semantic IDs here."""
    notes = []
    for row in rows:
        if str(row.get("data", "")).startswith("synthetic:"):
            notes.append(f"{row['shape']}: {BEAUTY} is not readable here; the data is `{row['data']}`, generated "
                         f"in its shape.")
        if row.get("model_config", {}).get("ids_levels"):
            notes.append(f"{row['shape']}: semantic IDs of {row['model_config']['ids_levels']} levels of "
                         f"{row['model_config']['ids_codebook']} synthetic codes (the benchmark builds the model "
                         f"without the ID file; a step costs the same whichever IDs).")
    return [line for note in notes for line in (note, "")]


def _profile_lines(profile: dict[str, Any]) -> list[str]:
    if "error" in profile:
        return [f"The trace ({profile['trace']}) could not be read here: {profile['error']}"]
    lines = _table(("part", "share of device time"),
                   [(part, _percent(share)) for part, share in profile["shares"].items()])
    step = profile["step_seconds"]
    lines += ["", f"{profile['ops']} ops ran for {profile['op_seconds'] * 1e3:.3g} ms in the traced step"
              + (f" (median step {step * 1e3:.3g} ms: ops over step {profile['op_seconds'] / step:.2f}; "
                 f"below 1 is time the device waited, above 1 ops that overlapped)" if step else "") + ".",
              "", "Costliest ops:", ""]
    lines += _table(("op", "ms", "part", "computes (JAX name stack)"),
                    [(op["op"], _num(op["seconds"], 1e-3), op["part"], f"`{op['computes']}`")
                     for op in profile["top_ops"]])
    return lines


def _smoke_lines(checks: dict[str, Any]) -> list[str]:
    sweep, served = checks["sweep"], checks["export_serve"]
    notes = {"sweep": f"2 tiny trials + report ({sweep.get('report') or 'no report'})",
             "export_serve": f"export for {served.get('platform', '?')}, serve {served.get('requests', '?')} requests, "
                             f"answers equal to in-process inference"}
    return _table(("check", "result", "seconds", "what"),
                  [(name, "ok" if check["ok"] else f"FAILED: {check['error']}", _num(check["seconds"]), notes[name])
                   for name, check in checks.items()])


def page(result: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in result["versions"].items())
    size = "toy sizes (--small)" if result["small"] else "full sizes"
    lines = [f"# The lab on {result['devices']} x {result['device_kind']} ({result['platform']})", "",
             f"`python -m benchmarks.accelerator --out DIR{' --small' if result['small'] else ''}`: {size}, "
             f"{result['wall_seconds']:.0f} s in all, compiles included. {versions}; "
             f"platform version {result['platform_version'] or '-'}.", "",
             "## Matmul rates", "", *_matmul_lines(result), "",
             "## Training steps", "",
             "bf16 compute; decoder-only rows: random ids over a synthetic catalogue, sampled softmax with "
             "uniform negatives. MFU = model FLOPs / s / peak (datasheet where known); the next column is against "
             "the measured bf16 matmul rate. Each row is `python -m benchmarks.throughput` with the flags in "
             "accelerator.json (`command`).", "",
             *_shape_lines(result["shapes"]), "", *_data_notes(result["shapes"]),
             "## Where the HSTU large step spends device time", "",
             "Ops attributed by the jax.named_scope names in their metadata (models/core/family.py, scaling/engine/step_functions.py): "
             "attention (HSTU's pointwise attention, its masks and time buckets), the embedding lookups, negative "
             "sampling and the loss's scoring, the optimizer update; other matmuls are the blocks' projections.", "",
             *_profile_lines(result["profile"]), "",
             "## End-to-end smoke", "", *_smoke_lines(result["smoke"]), ""]
    return "\n".join(lines)


# ---- the command --------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accelerator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for accelerator.json, accelerator.md, "
                                                                "the trace and the smoke runs")
    parser.add_argument("--small", action="store_true", help="toy sizes, on a CPU in well under a minute")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def writable_folder(path: Path) -> Path:
    """`path`, created; OSError when it cannot be written."""
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    probe.write_text("")
    probe.unlink()
    return path


def run(out: Path, small: bool) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict."""
    started = time.perf_counter()
    # First, while this process has not opened the devices: a TPU is held by one process at a time.
    sweep = checked("sweep", lambda: sweep_smoke(out / "smoke"))
    result: dict[str, Any] = {"small": small, **environment()}
    _log(f"{result['devices']} x {result['device_kind']} ({result['platform']}), {len(result['versions'])} packages")
    result["matmul"] = matmul_rates(result["platform"], result["device_kind"], small)
    peak = mfu_peak(result["platform"], result["matmul"])
    warmup, repeats = (1, 2) if small else (2, 5)
    data = beauty_data()
    shutil.rmtree(out / "profile", ignore_errors=True)
    shapes = SMALL_SHAPES if small else SHAPES
    rows: list[dict[str, Any]] = []
    profiled: dict[str, Any] = {}
    for index, shape in enumerate(shapes, 1):
        flags = shape_flags(shape, warmup, repeats, data)
        _log(f"[{index}/{len(shapes)}] {shape.name}: python -m benchmarks.throughput {shlex.join(flags)}")
        row = run_shape(shape, flags, out / "profile" if shape.profiled else None, peak, result["matmul"])
        outcome = f"failed: {row['error']}" if "error" in row else \
            f"step {_num(row['step_seconds'], 1e-3)} ms, MFU {_percent(row['mfu'])}"
        _log(f"[{index}/{len(shapes)}] {shape.name}: {outcome} ({row['wall_seconds']:.1f} s)")
        rows.append(row)
        if shape.profiled:
            profiled = row
    result["shapes"] = rows
    result["profile"] = read_profile(out / "profile", profiled["step_seconds"]) if "error" not in profiled else \
        {"trace": str(out / "profile"), "error": f"no trace: the {profiled['shape']} step failed"}
    served = checked("export_serve", lambda: export_smoke(out / "smoke" / "sweep", out / "smoke" / "export"))
    result["smoke"] = {"sweep": sweep, "export_serve": served}
    result["wall_seconds"] = time.perf_counter() - started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        out = writable_folder(args.out)
    except OSError as error:
        print(f"error: --out {args.out}: cannot write there: {error.strerror or error}", file=sys.stderr)
        return 2
    from scaling.services import cpu_settings

    if args.small and SMALL_COMPILE_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SMALL_COMPILE_FLAG}".strip()
    cpu_settings.keep_freed_memory_mapped()
    result = run(out, args.small)
    text = page(result)
    (out / "accelerator.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    (out / "accelerator.md").write_text(text)
    _log(f"wrote {out / 'accelerator.md'} and {out / 'accelerator.json'} ({result['wall_seconds']:.0f} s)")
    print(json.dumps(result, sort_keys=True) if args.json else text)
    return 0 if all(check["ok"] for check in result["smoke"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
