"""`python -m benchmarks.ml100k_families`: every model family on MovieLens-100K, seeds x presets.

  --runs DIR --seeds 0,1,2 [--rows tiger-rqkmeans,hstu] [--ablations] [--report FILE.md] [--json]

Each row is a preset at its default run, trained by `python -m scaling.train` in a subprocess with
workdir DIR/ROW-sSEED: a trial that has a result.json is read, not rerun; an interrupted one resumes
from its checkpoint. Seed S sets train.seed and, for the encoder-decoder, model.ids_seed (the
tokeniser is part of the method, so its variance belongs in the spread). The popularity ranking
(whole history excluded, deterministic) is computed in-process. The table gives mean (sd over
seeds) of test HR@10, NDCG@10, MRR, and params, train FLOPs, median step seconds, MFU and wall
seconds as each result.json records them.

--ablations adds seed-0 runs of tiger-ml100k that explain its numbers: the item-vector source
(metadata, co-occurrence, random vectors: IDs without semantic content) and levels x codebook.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # workdir prefix
    title: str
    preset: str
    overrides: tuple[str, ...] = ()  # "{seed}" and "{runs}" are replaced by the seed and the runs directory
    seeds: tuple[int, ...] = ()  # the only seeds this row runs, of those asked for (empty: all of them)

    def chosen_seeds(self, seeds: Sequence[int]) -> list[int]:
        return [seed for seed in seeds if not self.seeds or seed in self.seeds]

    def sets(self, seed: int, runs: Path) -> list[str]:
        return [override.format(seed=seed, runs=runs) for override in self.overrides]


RANDOM_VECTORS = "random-item-vectors.npy"

MAIN_ROWS = (
    Row("sasrec-ml1m", "SASRec", "sasrec-ml1m"),
    Row("hstu-ml1m", "HSTU", "hstu-ml1m"),
    Row("tiger-rqkmeans", "TIGER, RQ-KMeans IDs", "tiger-ml100k", ("model.ids_seed={seed}",)),
    Row("tiger-rqvae", "TIGER, RQ-VAE IDs", "tiger-ml100k", ("model.ids_seed={seed}", "model.ids_method=rqvae")),
    Row("tiger-rqkmeans-cooc", "TIGER, RQ-KMeans IDs of co-occurrence", "tiger-ml100k",
        ("model.ids_seed={seed}", "model.ids_source=cooccurrence")),
    Row("tiger-rqvae-cooc", "TIGER, RQ-VAE IDs of co-occurrence", "tiger-ml100k",
        ("model.ids_seed={seed}", "model.ids_method=rqvae", "model.ids_source=cooccurrence")),
)
ABLATION_ROWS = (
    Row("abl-source-metadata", "source metadata", "tiger-ml100k", ("model.ids_source=metadata",)),
    Row("abl-source-cooccurrence", "source cooccurrence", "tiger-ml100k", ("model.ids_source=cooccurrence",)),
    Row("abl-source-random", "source random vectors", "tiger-ml100k", ("model.ids_source=npy:{runs}/" + RANDOM_VECTORS,)),
    Row("abl-2x64", "2 x 64", "tiger-ml100k", ("model.ids_levels=2",)),
    Row("abl-3x32", "3 x 32", "tiger-ml100k", ("model.ids_codebook=32",)),
)
METRICS = ("hr@10", "ndcg@10", "mrr")
COSTS = ("params", "train_flops", "step_seconds", "mfu", "wall_seconds")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_trial(row: Row, seed: int, runs: Path) -> dict:
    """result.json of DIR/ROW-sSEED, training it first (or resuming it) unless it finished ok."""
    workdir = runs / f"{row.name}-s{seed}"
    result_path = workdir / "result.json"
    if not result_path.exists() or json.loads(result_path.read_text()).get("status") != "ok":
        command = [sys.executable, "-m", "scaling.train", "--preset", row.preset, "--seed", str(seed),
                   "--workdir", str(workdir), "--json"]
        for override in row.sets(seed, runs):
            command += ["--set", override]
        _log(f"{time.strftime('%H:%M:%S')} {row.name} seed {seed}: {' '.join(command[1:])}")
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir.with_suffix(".log"), "ab") as log:
            status = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=log, check=False).returncode
        if status != 0 or not result_path.exists():
            raise RuntimeError(f"{row.name} seed {seed} failed (exit {status}); see {workdir.with_suffix('.log')}")
    result = json.loads(result_path.read_text())
    _log(f"{row.name} seed {seed}: test HR@10 {result['hr@10']:.4f}, {result['wall_seconds']:.0f} s")
    return result


def popularity() -> dict:
    from data.baseline import popularity_baseline
    from data.dataset import prepare
    from data.split import leave_one_out

    split = leave_one_out(prepare("ml-100k").sequences, "reference")
    return popularity_baseline(split, max_len=100000)["test"]


def random_vectors(runs: Path, num_items: int = 1682, dim: int = 32) -> None:
    """Gaussian item vectors: quantised, they give IDs that carry nothing about the items."""
    import numpy as np

    path = runs / RANDOM_VECTORS
    if not path.exists():
        np.save(path, np.random.default_rng(0).standard_normal((num_items, dim)).astype(np.float32))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(row: Row, results: Sequence[dict],
              keys: Sequence[str] = METRICS + COSTS + ("valid_hr@10", "collision_rate")) -> dict:
    """Mean and sd over the seeds' results of each of `keys` that they record (a semantic-ID
    quality key read under `semantic_ids`)."""
    summary = {"row": row.name, "title": row.title, "seeds": [r["seed"] for r in results],
               "trial_ids": [r["trial_id"] for r in results]}
    for key in keys:
        values = [r[key] if key in r else (r.get("semantic_ids") or {}).get(key) for r in results]
        values = [v for v in values if v is not None]
        if values:
            summary[key], summary[f"{key}_sd"] = mean_sd(values)
    return summary


def _cell(summary: dict, key: str, digits: int = 4) -> str:
    if key not in summary:
        return "-"
    mean, sd = summary[key], summary[f"{key}_sd"]
    return f"{mean:.{digits}f} ({sd:.{digits}f})"


def _si(value: float) -> str:
    exponent = int(math.floor(math.log10(abs(value)))) if value else 0
    return f"{value / 10 ** exponent:.2f}e{exponent}"


def table(summaries: Sequence[dict]) -> str:
    lines = ["| model | HR@10 | NDCG@10 | MRR | params | train FLOPs | step s | MFU | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        costs = ["-"] * 5 if "params" not in s else [
            f"{s['params']:,.0f}", _si(s["train_flops"]), f"{s['step_seconds']:.3f}", f"{s['mfu']:.1%}",
            f"{s['wall_seconds']:.0f}"]
        lines.append(f"| {s['title']} | " + " | ".join([_cell(s, k) for k in METRICS] + costs) + " |")
    return "\n".join(lines)


def ablation_table(summaries: Sequence[dict]) -> str:
    lines = ["| IDs | test HR@10 | NDCG@10 | MRR | valid HR@10 | collision rate | params | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        cells = [f"{s[k]:.4f}" if k in s else "-" for k in ("hr@10", "ndcg@10", "mrr", "valid_hr@10", "collision_rate")]
        lines.append(f"| {s['title']} | " + " | ".join(cells) + f" | {s['params']:,.0f} | {s['wall_seconds']:.0f} |")
    return "\n".join(lines)


def rows_parser(prog: str, description: str, rows: Sequence[Row]) -> argparse.ArgumentParser:
    """--runs, --seeds, --rows (of `rows`), --report, --json: what every ML-100K table takes."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="directory of the trials' workdirs")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--rows", default=",".join(r.name for r in rows), help="comma-separated rows of the table")
    parser.add_argument("--report", type=Path, help="write the table as markdown here")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return parser


def chosen_rows(args: argparse.Namespace, rows: Sequence[Row]) -> tuple[list[Row], list[int]]:
    """(the rows --rows names, the seeds --seeds lists); ValueError naming a bad one. Prepares
    --runs and the trials' PYTHONPATH."""
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r} is not a comma-separated list of integers") from None
    known = {r.name: r for r in rows}
    names = [name for name in args.rows.split(",") if name]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown row {unknown[0]!r}; known: {', '.join(known)}")
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    args.runs.mkdir(parents=True, exist_ok=True)
    return [known[name] for name in names], seeds


def main(argv: Sequence[str] | None = None) -> int:
    parser = rows_parser("python -m benchmarks.ml100k_families", __doc__, MAIN_ROWS)
    parser.add_argument("--ablations", action="store_true", help="add the seed-0 tiger-ml100k ablations")
    args = parser.parse_args(argv)
    try:
        rows, seeds = chosen_rows(args, MAIN_ROWS)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        pop = popularity()
        summaries = [{"row": "popularity", "title": "popularity (whole history excluded)",
                      **{k: pop[k] for k in METRICS}, **{f"{k}_sd": 0.0 for k in METRICS}}]
        for row in rows:
            summaries.append(summarise(row, [run_trial(row, seed, args.runs) for seed in seeds]))
        ablations = []
        if args.ablations:
            random_vectors(args.runs)
            ablations = [summarise(row, [run_trial(row, 0, args.runs)]) for row in ABLATION_ROWS]
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = f"Test metrics: mean (sd) over seeds {args.seeds}.\n\n{table(summaries)}\n"
    if ablations:
        report += (f"\nAblations of tiger-ml100k (balanced RQ-KMeans IDs, metadata + co-occurrence, 3 x 64 unless "
                   f"the row says otherwise), seed 0:\n\n{ablation_table(ablations)}\n")
    if args.report:
        args.report.write_text(report)
    print(report if not args.json else json.dumps({"main": summaries, "ablations": ablations}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
