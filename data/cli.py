"""What the data commands share: the dataset arguments, preparing the dataset they name, and
printing a result (`python -m data`, `python -m scaling.build_ids`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

from data.dataset import PreparedData, prepare
from data.errors import DataError
from data.sequences import PreprocessOptions
from data.sources import FORMATS, known_names


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def dataset_arguments(parser: argparse.ArgumentParser, as_flag: bool = False) -> None:
    """The dataset (positional, or --data) and how to read and filter it."""
    what = f"a name ({', '.join(known_names())}) or a file/folder"
    if as_flag:
        parser.add_argument("--data", dest="dataset", required=True, help=what)
    else:
        parser.add_argument("dataset", help=what)
    parser.add_argument("--format", choices=FORMATS,
                        help="format of a file/folder (default: from its name; a .json file from its content)")
    parser.add_argument("--columns", help="for csv/parquet: user=COL,item=COL,timestamp=COL[,rating=COL]")
    parser.add_argument("--user-core", type=int, default=0, help="k-core: minimum interactions per user")
    parser.add_argument("--item-core", type=int, default=0, help="k-core: minimum interactions per item")
    parser.add_argument("--no-cache", action="store_true", help="rebuild: do not use or write cached results")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def _parse_columns(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    from data.readers.tabular import parse_column_mapping

    return parse_column_mapping(text)


def prepare_dataset(args: argparse.Namespace) -> PreparedData:
    """The dataset of dataset_arguments, prepared (or read from the cache), with progress lines."""
    log(f"preparing {args.dataset} ...")
    started = time.perf_counter()
    options = PreprocessOptions(user_core=args.user_core, item_core=args.item_core)
    prepared = prepare(args.dataset, format=args.format, columns=_parse_columns(args.columns),
                       options=options, use_cache=not args.no_cache)
    log(f"prepared {args.dataset} in {time.perf_counter() - started:.1f}s")
    return prepared


def print_result(result: dict, as_json: bool) -> None:
    """One JSON object, or one `key value` line per leaf (nested keys joined by dots)."""
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


def run_and_print(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> int:
    """A data command's run: its result printed (as JSON with --json), or a DataError as one line
    on stderr and exit status 2."""
    try:
        result = run(args)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_result(result, args.json)
    return 0
