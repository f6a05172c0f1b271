"""`python -m benchmarks.family_table --dataset NAME`: the model families on one dataset, seeds x
rows, with the published rows of that dataset beside ours.

  --dataset amazon-beauty|ml-100k --runs DIR [--seeds 0,1,2] [--rows a,b] [--report FILE.md] [--json]

Each row is a preset at its default run (the Beauty TIGER rows on other IDs at seed 0 only),
trained by `python -m scaling.train` in a subprocess (benchmarks/ml100k_families.py: run_trial)
with workdir DIR/ROW-sSEED: a trial with an ok result.json is read, not rerun; an interrupted one
resumes. The table gives mean (sd over seeds) of test R@5, R@10, NDCG@5,
NDCG@10 as result.json reports them (the evaluation of best validation HR@10, under each preset's
protocol), and params, train FLOPs and wall seconds. amazon-beauty needs SCALING_LAB_DATA (see
README: datasets). For ML-100K, `python -m benchmarks.ml100k_families` adds the popularity ranking
and the semantic-ID ablations to the same rows.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Sequence

from benchmarks.ml100k_families import MAIN_ROWS, Row, _si, chosen_rows, rows_parser, run_trial, summarise

METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")
COSTS = ("params", "train_flops", "wall_seconds")


@dataclasses.dataclass(frozen=True)
class Published:
    source: str
    model: str
    values: tuple[float, float, float, float]  # R@5, R@10, N@5, N@10


@dataclasses.dataclass(frozen=True)
class Table:
    rows: tuple[Row, ...]
    published: tuple[Published, ...] = ()


# IDs the lab builds itself where an item has no metadata: balanced residual k-means (3 levels of
# 256, TIGER's form, plus the collision code) of the items' co-occurrence vectors in the training
# sequences (semantic_ids/item_vectors.py).
LAB_IDS = ("model.ids=", "model.ids_source=cooccurrence", "model.ids_method=rqkmeans-balanced", "model.ids_levels=3",
           "model.ids_codebook=256", "model.ids_collision_code=true")

# Amazon 2014 Beauty 5-core, leave-one-out, full ranking with the history kept, Recall@5 / Recall@10 /
# NDCG@5 / NDCG@10 as each source reports them.
BEAUTY_PUBLISHED = (
    Published("TIGER paper (Rajput et al., NeurIPS 2023)", "SASRec", (.0387, .0605, .0249, .0318)),
    Published("TIGER paper (Rajput et al., NeurIPS 2023)", "TIGER", (.0454, .0648, .0321, .0384)),
    Published("phonism/genrec README", "SASRec", (.0469, .0688, .0305, .0375)),
    Published("phonism/genrec README", "HSTU", (.0486, .0708, .0340, .0412)),
    Published("phonism/genrec README", "TIGER", (.0465, .0721, .0297, .0378)),
    Published("Timoniche/tiger-cf README (RQ-VAE IDs)", "SASRec", (.0320, .0516, .0209, .0272)),
    Published("Timoniche/tiger-cf README (RQ-VAE IDs)", "TIGER", (.0376, .0582, .0252, .0319)),
)
TABLES = {
    "amazon-beauty": Table(
        rows=(Row("sasrec-beauty", "SASRec", "sasrec-beauty"), Row("hstu-beauty", "HSTU", "hstu-beauty"),
              Row("tiger-beauty-cpu", "TIGER, RQ-VAE IDs (shared), beam search", "tiger-beauty-cpu"),
              Row("tiger-beauty-cpu-rqkmeans", "TIGER, RQ-KMeans IDs (shared), beam search", "tiger-beauty-cpu",
                  ("model.ids=amazon-beauty:index_rqkmeans.json",), seeds=(0,)),
              Row("tiger-beauty-cpu-cooccurrence", "TIGER, the lab's IDs (co-occurrence), beam search",
                  "tiger-beauty-cpu", LAB_IDS, seeds=(0,))),
        published=BEAUTY_PUBLISHED),
    "ml-100k": Table(rows=MAIN_ROWS),
}


def table(summaries: Sequence[dict], published: Sequence[Published]) -> str:
    lines = ["| model | R@5 | R@10 | N@5 | N@10 | params | train FLOPs | wall s |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        cells = [f"{s[k]:.4f} ({s[f'{k}_sd']:.4f})" if k in s else "-" for k in METRICS]
        costs = [f"{s['params']:,.0f}", _si(s["train_flops"]), f"{s['wall_seconds']:.0f}"] if "params" in s else ["-"] * 3
        lines.append(f"| {s['title']} (ours, seeds {','.join(map(str, s['seeds']))}) | " + " | ".join(cells + costs) + " |")
    for p in published:
        lines.append(f"| {p.model} ({p.source}) | " + " | ".join(f"{v:.4f}" for v in p.values) + " | | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = rows_parser("python -m benchmarks.family_table", __doc__, ())
    parser.add_argument("--dataset", required=True, choices=sorted(TABLES), help="whose table")
    args = parser.parse_args(argv)
    chosen = TABLES[args.dataset]
    if not args.rows:
        args.rows = ",".join(row.name for row in chosen.rows)
    try:
        rows, seeds = chosen_rows(args, chosen.rows)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summaries = [summarise(row, [run_trial(row, seed, args.runs) for seed in row.chosen_seeds(seeds)],
                               METRICS + COSTS) for row in rows if row.chosen_seeds(seeds)]
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = (f"{args.dataset}: test metrics, mean (sd) over seeds, at the evaluation of best validation "
              f"HR@10; published rows beside.\n\n{table(summaries, chosen.published)}\n")
    if args.report:
        args.report.write_text(report)
    print(report if not args.json else json.dumps({"dataset": args.dataset, "rows": summaries}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
