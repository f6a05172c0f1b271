"""Load runs into a table: a CSV file, or a sweep's results.jsonl (one JSON record per line).

Records whose status is not "ok" are skipped with a note; nested objects become dotted columns
(mesh.data). Column lookups name the file and the columns it does have when one is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from analysis.errors import FitError

# Column names tried in order when none is given: results.jsonl fields first, then the Chinchilla CSV's.
PARAMS_COLUMNS = ("params_non_embedding", "params", "Model Size")
TOKENS_COLUMNS = ("tokens",)
COMPUTE_COLUMNS = ("train_flops", "Training FLOP")
LOSS_COLUMNS = ("eval_loss", "loss", "final_train_loss")
SEQ_LEN_COLUMNS = ("seq_len", "max_len")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def load_table(path: str | Path, note: Callable[[str], None] | None = None) -> pd.DataFrame:
    """A DataFrame of the runs in `path` (.jsonl/.json/.ndjson records, anything else read as CSV)."""
    path = Path(path)
    say = note or (lambda message: None)
    if not path.is_file():
        raise FitError(f"{path}: no such file")
    if path.suffix.lower() in JSON_SUFFIXES:
        table = _records(path, say)
    else:
        try:
            table = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise FitError(f"{path}: not a readable CSV: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if table.empty:
        raise FitError(f"{path}: no rows")
    table.attrs["source"] = str(path)
    return table


def _records(path: Path, say: Callable[[str], None]) -> pd.DataFrame:
    rows, skipped = [], []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise FitError(f"{path}: cannot read: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise FitError(f"{path}:{number}: not a JSON object ({error.msg}): {line[:120]!r}") from None
        if not isinstance(record, dict):
            raise FitError(f"{path}:{number}: not a JSON object: {line[:120]!r}")
        status = record.get("status", "ok")
        if status != "ok":
            skipped.append(f"{record.get('trial_id', f'line {number}')} ({str(status)[:80]})")
            continue
        rows.append(record)
    if skipped:
        say(f"{path}: skipped {len(skipped)} record(s) whose status is not ok: {'; '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""))
    if not rows:
        raise FitError(f"{path}: no records with status ok")
    return pd.json_normalize(rows)


def params_for_compute(table: pd.DataFrame) -> tuple[str, dict[str, float]] | None:
    """Of the parameter counts the table has (PARAMS_COLUMNS), the one for which C = 6 N D holds
    best: the smallest median |log(train_flops / (6 N tokens))| over the runs, with each count's
    median ratio; None without train_flops and tokens. The joint law's allocation and the IsoFLOP
    profiles both read compute as 6 N D; with a full softmax over a large catalogue the output
    table's FLOPs make the total count, not the non-embedding one, the N of that identity."""
    if not {"train_flops", "tokens"} <= set(table.columns):
        return None
    flops = pd.to_numeric(table["train_flops"], errors="coerce").to_numpy(float)
    tokens = pd.to_numeric(table["tokens"], errors="coerce").to_numpy(float)
    ratios = {}
    for name in PARAMS_COLUMNS:
        if name in table.columns:
            n = pd.to_numeric(table[name], errors="coerce").to_numpy(float)
            ratio = flops / (6.0 * n * tokens)
            ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
            if ratio.size:
                ratios[name] = float(np.median(ratio))
    if not ratios:
        return None
    return min(ratios, key=lambda name: abs(np.log(ratios[name]))), ratios


def source(table: pd.DataFrame) -> str:
    return table.attrs.get("source", "table")


def pick_column(table: pd.DataFrame, given: str | None, candidates: Sequence[str], role: str) -> str:
    """`given` if set (it must exist), else the first of `candidates` the table has with a value
    in some row (a family whose evaluation has no loss leaves eval_loss empty)."""
    if given is not None:
        require_column(table, given)
        return given
    for name in candidates:
        if name in table.columns and table[name].notna().any():
            return name
    raise FitError(f"{source(table)}: no {role} column (looked for {', '.join(candidates)}; "
                   f"have: {', '.join(map(str, table.columns))}); name one with the matching --*-col option")


def require_column(table: pd.DataFrame, name: str) -> None:
    if name not in table.columns:
        raise FitError(f"{source(table)}: missing column {name!r} (have: {', '.join(map(str, table.columns))})")


def numeric(table: pd.DataFrame, name: str) -> np.ndarray:
    """Column `name` as floats; FitError naming the file, column and first row that is not a number."""
    require_column(table, name)
    values = pd.to_numeric(table[name], errors="coerce")
    bad = values.isna() & table[name].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise FitError(f"{source(table)}: column {name!r} row {row}: not a number: {table[name].iloc[row]!r}")
    return values.to_numpy(dtype=float)


def drop_highest(table: pd.DataFrame, column: str, count: int) -> pd.DataFrame:
    """The table without its `count` rows of highest `column` (the Chinchilla replication drops 5 by loss)."""
    if count <= 0:
        return table
    if count >= len(table):
        raise FitError(f"{source(table)}: cannot drop {count} of {len(table)} rows")
    values = numeric(table, column)
    keep = np.sort(np.argsort(values, kind="stable")[:-count])
    out = table.iloc[keep].reset_index(drop=True)
    out.attrs.update(table.attrs)
    return out
