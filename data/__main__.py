"""`python -m data`: dataset statistics, the popularity baseline, padding of batch layouts, semantic IDs."""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from typing import Callable, Sequence

import numpy as np

from data.cli import dataset_arguments, prepare_dataset, run_and_print
from data.dataset import PreparedData


def _iso(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).isoformat()


def stats(prepared: PreparedData) -> dict:
    """Counts, sequence-length quantiles and time span of a prepared dataset."""
    seqs = prepared.sequences
    lengths = seqs.lengths
    quantiles = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
    result = {
        "dataset": prepared.name,
        "users": seqs.num_users,
        "items": seqs.num_items,
        "interactions": int(lengths.sum()),
        "sequence_length": {
            "mean": float(lengths.mean()),
            **{f"p{round(q * 100)}": float(np.quantile(lengths, q)) for q in quantiles},
        },
        "time_span": {
            "first": _iso(seqs.timestamps.min()),
            "last": _iso(seqs.timestamps.max()),
            "days": float((seqs.timestamps.max() - seqs.timestamps.min()) / 86400.0),
        } if prepared.properties.get("has_timestamps", 1.0) else None,  # positions stand in for time
        "preprocessing": prepared.report,
    }
    result.update(prepared.properties)
    return result


def _run_stats(args: argparse.Namespace) -> dict:
    return stats(prepare_dataset(args))


def _run_baseline(args: argparse.Namespace) -> dict:
    from data.baseline import popularity_baseline
    from data.split import leave_one_out

    split = leave_one_out(prepare_dataset(args).sequences, "reference")
    metrics = popularity_baseline(split, max_len=args.max_len)
    return {"dataset": args.dataset, "baseline": args.kind, "max_len": args.max_len,
            **{f"test_{k}": v for k, v in metrics["test"].items()},
            **{f"valid_{k}": v for k, v in metrics["valid"].items()}}


def _run_padding(args: argparse.Namespace) -> dict:
    from data.pipeline import PipelineConfig, padding_fraction
    from data.split import leave_one_out

    split = leave_one_out(prepare_dataset(args).sequences, args.split)
    result = {"dataset": args.dataset, "max_len": args.max_len}
    for packed in (False, True):
        config = PipelineConfig(row_len=args.max_len + 1, packed=packed, window=args.window, seed=args.seed)
        result["packed" if packed else "padded"] = padding_fraction(split.train, config)
    result["padding_saved"] = result["padded"] - result["packed"]
    return result


def _run_semantic_ids(arguments: Sequence[str]) -> int:
    """The semantic-IDs command is the engine's (scaling/build_ids.py: one source of item vectors
    reads trained trials, a layer above this one): run it, in a process of its own, on the rest of
    the arguments."""
    return subprocess.call([sys.executable, "-m", "scaling.build_ids", *arguments])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, run: Callable[[argparse.Namespace], dict], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    dataset_arguments(add("stats", _run_stats, "users, items, interactions, sequence lengths, time span"))
    baseline = add("baseline", _run_baseline, "a non-learned baseline under the full-ranking protocol")
    baseline.add_argument("kind", choices=["popularity"])
    dataset_arguments(baseline)
    baseline.add_argument("--max-len", type=int, default=200, help="history items excluded from ranking")
    padding = add("padding", _run_padding, "fraction of padding tokens in padded vs packed training rows")
    dataset_arguments(padding)
    padding.add_argument("--max-len", type=int, default=200, help="history items per training row (rows hold max_len + 1 tokens, as in training)")
    padding.add_argument("--window", choices=["recent", "random"], default="recent")
    padding.add_argument("--split", choices=["reference", "holdout"], default="reference")
    padding.add_argument("--seed", type=int, default=0)
    commands.add_parser("semantic-ids", add_help=False,  # main() hands its arguments to scaling.build_ids
                        help="build semantic IDs (residual codes + a collision code) for every item and measure "
                             "their quality (`python -m data semantic-ids --help`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["semantic-ids"]:
        return _run_semantic_ids(argv[1:])
    args = _parser().parse_args(argv)
    return run_and_print(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
