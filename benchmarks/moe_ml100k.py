"""`python -m benchmarks.moe_ml100k`: the dense decoder against mixtures of experts on MovieLens-100K.

  --runs DIR --seeds 0,1,2 [--rows dense,moe,moe-2x] [--report FILE.md] [--json]

Rows: tiger-ml100k (dense feed-forward of 256), onerec-moe-ml100k (8 experts x 128, top 2: the
dense row's active FLOPs per token, 4x its feed-forward parameters) and onerec-moe-ml100k with
experts of 256 (2x the active FLOPs). Each trial is `python -m scaling.train` in a subprocess with
workdir DIR/ROW-sSEED, read rather than rerun when its result.json exists (resumable, like
benchmarks.ml100k_families, whose runner this reuses). Seed S sets train.seed and model.ids_seed.

Router statistics come from the trial's metrics.jsonl: the dropped-token fraction and the busiest
expert's load (E x its share of routed tokens; 1 is perfect balance) averaged over the logged
training steps, and at the last logged step.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Sequence

from benchmarks.ml100k_families import Row, _si, chosen_rows, mean_sd, rows_parser, run_trial
from scaling.services.metrics_log import read_records

ROWS = (
    Row("dense", "dense feed-forward 256", "tiger-ml100k", ("model.ids_seed={seed}",)),
    Row("moe", "8 experts x 128, top 2 (same active FLOPs)", "onerec-moe-ml100k", ("model.ids_seed={seed}",)),
    Row("moe-2x", "8 experts x 256, top 2 (2x active FLOPs)", "onerec-moe-ml100k",
        ("model.ids_seed={seed}", "model.expert_d_ff=256")),
)
ROUTER = ("moe_dropped", "moe_load_max", "moe_entropy", "moe_balance")


def router_stats(workdir: Path) -> dict[str, float]:
    """Mean over logged training steps, and last logged value, of each router statistic."""
    records = read_records(workdir)
    stats: dict[str, float] = {}
    for name in ROUTER:
        values = [r[f"aux/{name}"] for r in records if f"aux/{name}" in r]
        if values:
            stats[f"{name}_mean"] = statistics.fmean(values)
            stats[f"{name}_last"] = values[-1]
    return stats


KEYS = ("hr@10", "ndcg@10", "mrr", "params", "params_active", "params_non_embedding", "train_flops",
        "step_seconds", "mfu", "wall_seconds") + tuple(f"{n}_{w}" for n in ROUTER for w in ("mean", "last"))


def summarise(row: Row, results: Sequence[dict]) -> dict:
    summary: dict = {"row": row.name, "title": row.title, "seeds": [r["seed"] for r in results],
                     "trial_ids": [r["trial_id"] for r in results]}
    for key in KEYS:
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            summary[key], summary[f"{key}_sd"] = mean_sd(values)
    return summary


def _cell(summary: dict, key: str, format_spec: str) -> str:
    if key not in summary:
        return "-"
    return f"{summary[key]:{format_spec}} ({summary[key + '_sd']:{format_spec}})"


def table(summaries: Sequence[dict]) -> str:
    lines = ["| decoder feed-forward | HR@10 | NDCG@10 | params | params active | train FLOPs | step s | MFU "
             "| dropped (mean / last) | load max (mean / last) | router entropy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        router = ["-", "-", "-"]
        if "moe_dropped_mean" in s:
            router = [f"{s['moe_dropped_mean']:.2%} / {s['moe_dropped_last']:.2%}",
                      f"{s['moe_load_max_mean']:.2f} / {s['moe_load_max_last']:.2f}",
                      f"{s['moe_entropy_mean']:.3f}"]
        lines.append(f"| {s['title']} | {_cell(s, 'hr@10', '.4f')} | {_cell(s, 'ndcg@10', '.4f')} "
                     f"| {s['params']:,.0f} | {s['params_active']:,.0f} | {_si(s['train_flops'])} "
                     f"| {_cell(s, 'step_seconds', '.3f')} | {_cell(s, 'mfu', '.1%')} | " + " | ".join(router) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = rows_parser("python -m benchmarks.moe_ml100k", __doc__, ROWS).parse_args(argv)
    try:
        rows, seeds = chosen_rows(args, ROWS)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summaries = []
    try:
        for row in rows:
            results = []
            for seed in seeds:
                result = run_trial(row, seed, args.runs)
                results.append({**result, **router_stats(args.runs / f"{row.name}-s{seed}")})
            summaries.append(summarise(row, results))
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = f"Test metrics: mean (sd) over seeds {args.seeds}.\n\n{table(summaries)}\n"
    if args.report:
        args.report.write_text(report)
    print(report if not args.json else json.dumps({"rows": summaries}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
