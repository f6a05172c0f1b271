"""`python -m data`: dataset statistics, the popularity baseline, padding of batch layouts, semantic IDs."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from data.dataset import PreparedData, prepare
from data.errors import DataError
from data.sequences import PreprocessOptions
from data.sources import FORMATS, known_names


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse_columns(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    from data.readers.tabular import parse_column_mapping

    return parse_column_mapping(text)


def _prepare(args: argparse.Namespace) -> PreparedData:
    _log(f"preparing {args.dataset} ...")
    started = time.perf_counter()
    options = PreprocessOptions(user_core=args.user_core, item_core=args.item_core)
    prepared = prepare(args.dataset, format=args.format, columns=_parse_columns(args.columns),
                       options=options, use_cache=not args.no_cache)
    _log(f"prepared {args.dataset} in {time.perf_counter() - started:.1f}s")
    return prepared


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
    return stats(_prepare(args))


def _run_baseline(args: argparse.Namespace) -> dict:
    from data.baseline import popularity_baseline
    from data.split import leave_one_out

    split = leave_one_out(_prepare(args).sequences, "reference")
    metrics = popularity_baseline(split, max_len=args.max_len)
    return {"dataset": args.dataset, "baseline": args.kind, "max_len": args.max_len,
            **{f"test_{k}": v for k, v in metrics["test"].items()},
            **{f"valid_{k}": v for k, v in metrics["valid"].items()}}


def _run_padding(args: argparse.Namespace) -> dict:
    from data.pipeline import PipelineConfig, padding_fraction
    from data.split import leave_one_out

    split = leave_one_out(_prepare(args).sequences, args.split)
    result = {"dataset": args.dataset, "max_len": args.max_len}
    for packed in (False, True):
        config = PipelineConfig(row_len=args.max_len + 1, packed=packed, window=args.window, seed=args.seed)
        result["packed" if packed else "padded"] = padding_fraction(split.train, config)
    result["padding_saved"] = result["padded"] - result["packed"]
    return result


def _run_semantic_ids(args: argparse.Namespace) -> dict:
    from scaling.engine import trained_table  # a command may use any layer: checkpoint:DIR sources read trials
    from semantic_ids import artefact as semantic_ids

    config = semantic_ids.SemanticIdConfig(
        method=args.method, levels=args.levels, codebook=args.codebook, source=args.source, seed=args.seed,
        dim=args.dim, window=args.window, n_init=args.n_init, lloyd=args.lloyd, balanced_iters=args.balanced_iters,
        rqvae_steps=args.rqvae_steps)
    prepared = _prepare(args)
    ids = semantic_ids.build(prepared, config, mesh=_row_mesh(), use_cache=not args.no_cache, log=_log,
                            trained_table=trained_table.read)
    semantic_ids.save(ids, Path(args.out))
    _log(f"wrote {args.out}: {len(ids.item_ids)} items x {ids.codes.shape[1]} codes")
    return {"dataset": args.dataset, "out": args.out, **config.to_dict(), "input_hash": ids.input_hash,
            "items": int(len(ids.item_ids)), **ids.quality}


def _row_mesh():
    """A one-axis mesh over every device when there are several (quantisers shard items over it)."""
    import jax
    from jax.sharding import Mesh

    if jax.device_count() == 1:
        return None
    return Mesh(np.asarray(jax.devices()), ("rows",))


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        else:
            print(f"{prefix[:-1]:<34} {value:.4f}" if isinstance(value, float) else f"{prefix[:-1]:<34} {value}")
    walk("", result)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, run: Callable[[argparse.Namespace], dict], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(run=run)
        return sub

    def dataset_arguments(sub: argparse.ArgumentParser, as_flag: bool = False) -> None:
        what = f"a name ({', '.join(known_names())}) or a file/folder"
        if as_flag:
            sub.add_argument("--data", dest="dataset", required=True, help=what)
        else:
            sub.add_argument("dataset", help=what)
        sub.add_argument("--format", choices=FORMATS,
                         help="format of a file/folder (default: from its name; a .json file from its content)")
        sub.add_argument("--columns", help="for csv/parquet: user=COL,item=COL,timestamp=COL[,rating=COL]")
        sub.add_argument("--user-core", type=int, default=0, help="k-core: minimum interactions per user")
        sub.add_argument("--item-core", type=int, default=0, help="k-core: minimum interactions per item")
        sub.add_argument("--no-cache", action="store_true", help="rebuild: do not use or write cached results")
        sub.add_argument("--json", action="store_true", help="print one JSON object as the last line")

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
    ids = add("semantic-ids", _run_semantic_ids,
              "build semantic IDs (residual codes + a collision code) for every item and measure their quality")
    dataset_arguments(ids, as_flag=True)
    from semantic_ids.artefact import METHODS, SemanticIdConfig

    defaults = SemanticIdConfig()
    ids.add_argument("--method", choices=METHODS, default=defaults.method)
    ids.add_argument("--levels", type=int, default=defaults.levels, help="residual levels L (the ID has L + 1 codes)")
    ids.add_argument("--codebook", type=int, default=defaults.codebook, help="codes per level K")
    ids.add_argument("--source", default=defaults.source,
                     help="item vectors: metadata, cooccurrence, checkpoint:WORKDIR, npy:FILE, or A+B")
    ids.add_argument("--seed", type=int, default=defaults.seed)
    ids.add_argument("--dim", type=int, default=defaults.dim, help="width of each SVD-reduced vector part")
    ids.add_argument("--window", type=int, default=defaults.window, help="co-occurrence window in training sequences")
    ids.add_argument("--n-init", type=int, default=defaults.n_init, help="k-means restarts per level")
    ids.add_argument("--lloyd", choices=("full", "minibatch"), default=defaults.lloyd)
    ids.add_argument("--balanced-iters", type=int, default=defaults.balanced_iters,
                     help="balanced Lloyd rounds over all items (rqkmeans-balanced)")
    ids.add_argument("--rqvae-steps", type=int, default=defaults.rqvae_steps)
    ids.add_argument("--out", required=True, help="write the artefact (.npz) here (it is also kept in the cache)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = args.run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
