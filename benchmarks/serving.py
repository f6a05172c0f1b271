"""`python -m benchmarks.serving`: latency and throughput of exported serving functions on this machine.

  --trials PRESET=WORKDIR[,PRESET=WORKDIR...] [--train-steps 20] [--k 10] [--calls 200]
  [--report FILE.md] [--json]

For each trial: a workdir without checkpoints is first trained for --train-steps steps of its
preset (the speed of a serving function does not depend on the weights); the last checkpoint is
exported by scaling.export into WORKDIR/export-k{K} (reused when present) and loaded by
scaling.serve, as a serving process would. The requests are the real ML-100K users' most recent
training histories. Timed: the exported function alone (dense ids in, top-k out, each call
waited for), after two warm-up calls per shape: latency p50 / p99 over --calls calls at batch 1,
and users per second at batch 128 (median of --calls / 10 calls, at least 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_trained(preset: str, workdir: Path, steps: int) -> None:
    if (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir()):
        return
    _log(f"{preset}: no checkpoint in {workdir}; training {steps} steps")
    command = [sys.executable, "-m", "scaling.train", "--preset", preset, "--workdir", str(workdir),
               "--set", f"train.steps={steps}", "--json"]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{preset}: training failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def request_arrays(model, histories: Sequence[np.ndarray], rows: int, start: int) -> list[np.ndarray]:
    from scaling import serve

    chosen = [histories[(start + i) % len(histories)] for i in range(rows)]
    requests = [serve.Request([model.item_ids[i - 1] for i in h]) for h in chosen]
    return model.arrays(requests)[0]


def time_calls(model, arrays: list[np.ndarray], calls: int) -> list[float]:
    for _ in range(2):
        model.call(*arrays)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        model.call(*arrays)  # np.asarray of the outputs waits for them
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(preset: str, workdir: Path, k: int, calls: int, steps: int) -> dict:
    from scaling import export, serve

    ensure_trained(preset, workdir, steps)
    out = workdir / f"export-k{k}"
    if not (out / export.MANIFEST).exists():
        export.export_trial(workdir, out, "last", k=k, log=_log)
    model = serve.ExportedModel(out)
    trial = export.load_trial(workdir)
    train = trial.train_sequences
    histories = [train.user_items(u)[-model.length:] for u in range(train.num_users) if train.length(u)]
    single = time_calls(model, request_arrays(model, histories, 1, 0), calls)
    batched = time_calls(model, request_arrays(model, histories, 128, 0), max(calls // 10, 5))
    sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    row = {"preset": preset, "family": model.info["family"], "workdir": str(workdir), "step": model.info["step"],
           "k": k, "history_length": model.length, "export_bytes": sum(sizes.values()),
           "params_bytes": sizes["params.safetensors"], "function_bytes": sizes["serve.jax"],
           "p50_ms_batch1": 1e3 * float(np.percentile(single, 50)),
           "p99_ms_batch1": 1e3 * float(np.percentile(single, 99)),
           "users_per_second_batch128": 128 / statistics.median(batched)}
    _log(f"{preset}: p50 {row['p50_ms_batch1']:.2f} ms, p99 {row['p99_ms_batch1']:.2f} ms at batch 1; "
         f"{row['users_per_second_batch128']:.0f} users/s at batch 128")
    return row


def table(rows: Sequence[dict]) -> str:
    lines = ["| preset | family | history | k | export MB (params / function) | p50 ms @1 | p99 ms @1 | users/s @128 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['family']} | {r['history_length']} | {r['k']} | "
                     f"{r['export_bytes'] / 1e6:.2f} ({r['params_bytes'] / 1e6:.2f} / {r['function_bytes'] / 1e6:.2f}) | "
                     f"{r['p50_ms_batch1']:.2f} | {r['p99_ms_batch1']:.2f} | {r['users_per_second_batch128']:.0f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", required=True, help="comma-separated PRESET=WORKDIR pairs")
    parser.add_argument("--train-steps", type=int, default=20, help="steps for a workdir without checkpoints")
    parser.add_argument("--k", type=int, default=10, help="items per user")
    parser.add_argument("--calls", type=int, default=200, help="timed calls at batch 1")
    parser.add_argument("--report", type=Path, help="write the table as markdown here")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    pairs = [part.split("=", 1) for part in args.trials.split(",") if part]
    if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        print(f"error: --trials {args.trials!r} is not PRESET=WORKDIR[,PRESET=WORKDIR...]", file=sys.stderr)
        return 2
    from scaling.export import ExportError
    from scaling.presets import PRESETS
    from scaling.serve import ServeError

    unknown = [name for name, _ in pairs if name not in PRESETS]
    if unknown:
        print(f"error: --trials: unknown preset {unknown[0]!r}; known: {', '.join(sorted(PRESETS))}", file=sys.stderr)
        return 2
    try:
        rows = [measure(name, Path(workdir), args.k, args.calls, args.train_steps) for name, workdir in pairs]
    except (RuntimeError, ExportError, ServeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = table(rows)
    if args.report:
        args.report.write_text(report + "\n")
    print(json.dumps({"rows": rows}, sort_keys=True) if args.json else report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
