"""`python -m benchmarks.table_optimizers_ml100k`: how the item table is updated, on MovieLens-100K.

  --runs DIR --seeds 0,1,2 [--rows adam,lazy-adam,...] [--report FILE.md] [--json]

Rows: hstu-ml1m as the family table trains it (dense AdamW on every parameter), and the same
trial with train.table_optimizer lazy_adam (Adam on the rows a step touches only) and
rowwise_adagrad (one accumulator per row) at the preset's rate, and row-wise Adagrad at 10x it
(Adagrad's steps shrink as its accumulator grows). Each trial is `python -m scaling.train` in a
subprocess with workdir DIR/ROW-sSEED, read rather than rerun when its result.json exists
(benchmarks.ml100k_families's runner).
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from benchmarks.ml100k_families import Row, chosen_rows, rows_parser, run_trial, summarise, table

ROWS = (
    Row("adam", "dense AdamW (hstu-ml1m)", "hstu-ml1m"),
    Row("lazy-adam", "lazy Adam, touched rows only", "hstu-ml1m", ("train.table_optimizer=lazy_adam",)),
    Row("rowwise-adagrad", "row-wise Adagrad, lr 1e-3", "hstu-ml1m", ("train.table_optimizer=rowwise_adagrad",)),
    Row("rowwise-adagrad-10x", "row-wise Adagrad, lr 1e-2", "hstu-ml1m",
        ("train.table_optimizer=rowwise_adagrad", "train.table_learning_rate=0.01")),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = rows_parser("python -m benchmarks.table_optimizers_ml100k", __doc__, ROWS).parse_args(argv)
    try:
        rows, seeds = chosen_rows(args, ROWS)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        summaries = [summarise(row, [run_trial(row, seed, args.runs) for seed in seeds]) for row in rows]
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
