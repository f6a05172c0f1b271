"""Generic CSV / Parquet interaction tables with a user-given column mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from data.errors import DataError
from data.interactions import Interactions

ROLES = ("user", "item", "timestamp", "rating")
REQUIRED = ("user", "item", "timestamp")
_MILLISECONDS_ABOVE = 1e11  # seconds since 1970 stay below this until the year 5138


def parse_column_mapping(text: str) -> dict[str, str]:
    """`user=COL,item=COL,timestamp=COL[,rating=COL]` -> {role: column}."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        role, sep, column = part.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not column:
            raise DataError(f"--columns: {part!r} is not ROLE=COLUMN")
        if role not in ROLES:
            raise DataError(f"--columns: unknown role {role!r}; roles are {', '.join(ROLES)}")
        if role in mapping:
            raise DataError(f"--columns: {role} is given twice")
        mapping[role] = column
    missing = [role for role in REQUIRED if role not in mapping]
    if missing:
        raise DataError(f"--columns: missing {', '.join(missing)} (needs user=COL,item=COL,timestamp=COL[,rating=COL])")
    return mapping


def _read_frame(path: Path, format: str, columns: list[str]) -> pd.DataFrame:
    try:
        if format == "parquet":
            import pyarrow.parquet as pq

            available = pq.read_schema(path).names
            _check_columns(path, columns, available)
            return pq.read_table(path, columns=columns).to_pandas()
        header = pd.read_csv(path, nrows=0).columns.tolist()
        _check_columns(path, columns, header)
        return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot parse: {str(error).strip()}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from None


def _check_columns(path: Path, wanted: list[str], available: list[str]) -> None:
    absent = [c for c in wanted if c not in available]
    if absent:
        raise DataError(f"{path}: no column {absent[0]!r}; columns are {', '.join(map(str, available))}")


def _row_hint(path: Path, format: str, index: int) -> str:
    return f"{path}:{index + 2}" if format == "csv" else f"{path}: row {index}"  # csv: 1-based, after the header


def _timestamps(values: pd.Series, path: Path, format: str, unit: str) -> np.ndarray:
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        seconds = numeric.to_numpy(np.float64)
        if unit == "ms" or (unit == "auto" and np.nanmax(np.abs(seconds)) > _MILLISECONDS_ABOVE):
            seconds = seconds / 1000.0
        return np.floor(seconds).astype(np.int64)
    if unit != "auto" or numeric.notna().any():
        bad = int(np.flatnonzero(numeric.isna().to_numpy())[0])
        raise DataError(f"{_row_hint(path, format, bad)}: timestamp {values.iloc[bad]!r} is not a number")
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    if parsed.isna().any():
        bad = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(f"{_row_hint(path, format, bad)}: timestamp {values.iloc[bad]!r} is neither a number nor a date")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _integers_if_all(values: pd.Series) -> pd.Series:
    text = values.dropna()
    return values.astype(np.int64) if len(text) == len(values) and text.str.fullmatch(r"-?\d{1,18}").all() else values


def _ids(values: pd.Series, path: Path, format: str, role: str) -> np.ndarray:
    if values.isna().any():
        bad = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise DataError(f"{_row_hint(path, format, bad)}: empty {role} id")
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(np.int64)
    return values.astype(str).to_numpy(object)


def read_tabular(path: Path, format: str, columns: Mapping[str, str], timestamp_unit: str = "auto") -> Interactions:
    """Interactions from a CSV (header row) or Parquet file.

    timestamp_unit: "s", "ms", or "auto": numbers are seconds unless they exceed 1e11 (then
    milliseconds); strings are parsed as ISO-8601 dates/times in UTC.
    """
    path = Path(path)
    if format not in ("csv", "parquet"):
        raise DataError(f"{path}: tabular format must be csv or parquet, not {format!r}")
    if timestamp_unit not in ("auto", "s", "ms"):
        raise DataError(f"timestamp unit must be auto, s or ms, not {timestamp_unit!r}")
    frame = _read_frame(path, format, list(dict.fromkeys(columns.values())))
    if frame.empty:
        raise DataError(f"{path}: no rows")
    rating = None
    if "rating" in columns:
        values = pd.to_numeric(frame[columns["rating"]], errors="coerce")
        if values.isna().any():
            bad = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise DataError(f"{_row_hint(path, format, bad)}: rating {frame[columns['rating']].iloc[bad]!r} is not a number")
        rating = values.to_numpy(np.float32)
    user = frame[columns["user"]]
    item = frame[columns["item"]]
    if format == "csv":  # read as text; integer ids become integers again
        user, item = (_integers_if_all(values) for values in (user, item))
    return Interactions(
        user=_ids(user, path, format, "user"),
        item=_ids(item, path, format, "item"),
        timestamp=_timestamps(frame[columns["timestamp"]], path, format, timestamp_unit),
        rating=rating,
        source=str(path),
    )
