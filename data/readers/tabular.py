"""Generic CSV / Parquet interaction tables with a user-given column mapping.

`--columns user=COL,item=COL,timestamp=COL[,rating=COL]` names the file's columns for each role.
Bad values are reported with their place: `events.csv:17: empty user id: '...'` (the 1-based
line of a CSV file, quoted newlines counted) or `events.parquet: row 17: ...` (1-based row).
"""

from __future__ import annotations

import csv
import gzip
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from data.errors import DataError, located
from data.interactions import Interactions

ROLES = ("user", "item", "timestamp", "rating")
REQUIRED = ("user", "item", "timestamp")
FORMATS = ("csv", "parquet")
TIMESTAMP_UNITS = ("auto", "s", "ms")
# Seconds since 1970 stay below this until the year 5138; milliseconds pass it from March 1973.
MILLISECONDS_ABOVE = 1e11
_CSV_CHUNK_ROWS = 1_000_000
_CANONICAL_INTEGER = r"-?(?:0|[1-9][0-9]{0,17})"  # digits that int() and str() map back unchanged


class _BadValue(Exception):
    """A bad value in data row `row` (0-based); read_tabular turns it into a located DataError."""

    def __init__(self, row: int, problem: str) -> None:
        super().__init__(problem)
        self.row = row
        self.problem = problem


def parse_column_mapping(text: str) -> dict[str, str]:
    """`user=COL,item=COL,timestamp=COL[,rating=COL]` -> {role: column}.

    Raises DataError for an empty mapping, a part that is not ROLE=COLUMN, an unknown role, a
    role given twice, a column given two roles, or a missing user, item or timestamp.
    """
    usage = "--columns user=COL,item=COL,timestamp=COL[,rating=COL]"
    parts = [part.strip() for part in (text or "").split(",")]
    if not any(parts):
        raise DataError(f"--columns is empty; expected {usage}")
    mapping: dict[str, str] = {}
    for part in parts:
        role, equals, column = (piece.strip() for piece in part.partition("="))
        if not equals or not role or not column:
            raise DataError(f"--columns: {part!r} is not ROLE=COLUMN; expected {usage}")
        if role not in ROLES:
            raise DataError(f"--columns: unknown role {role!r}; roles are {', '.join(ROLES)}")
        if role in mapping:
            raise DataError(f"--columns: {role} is given twice")
        shared = [other for other, name in mapping.items() if name == column]
        if shared:
            raise DataError(f"--columns: column {column!r} is given for both {shared[0]} and {role}")
        mapping[role] = column
    missing = [role for role in REQUIRED if role not in mapping]
    if missing:
        raise DataError(f"--columns: missing {', '.join(missing)}; expected {usage}")
    return mapping


def read_tabular(
    path: Path, format: str, columns: Mapping[str, str], timestamp_unit: str = "auto"
) -> Interactions:
    """Interactions from a CSV file (header row, comma separated, quoting allowed, optionally
    .gz) or a Parquet file, rows in file order.

    columns: {role: column name} for user, item, timestamp and optionally rating.
    Ids stay as read: int64 when the column holds integers (in a CSV: integers written without
    leading zeros or signs that would change them), else str.
    timestamp_unit: "s" or "ms" for numbers in that unit; "auto" takes numbers as seconds unless
    the largest magnitude exceeds 1e11 (then the column is milliseconds), and text as ISO-8601
    dates/times (UTC unless an offset is given). Parquet timestamp columns are used as they are.
    Timestamps are floored to whole seconds. Rating: float32 when mapped, else None.
    """
    path = Path(path)
    if format not in FORMATS:
        raise DataError(f"{path}: tabular format must be one of {', '.join(FORMATS)}, not {format!r}")
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise DataError(f"timestamp unit must be one of {', '.join(TIMESTAMP_UNITS)}, not {timestamp_unit!r}")
    missing = [role for role in REQUIRED if role not in columns]
    if missing:
        raise DataError(f"{path}: the column mapping lacks {', '.join(missing)}")
    wanted = list(dict.fromkeys(columns[role] for role in ROLES if role in columns))
    if format == "csv":
        frame = _read_csv(path, wanted, id_columns=[columns["user"], columns["item"]])
    else:
        frame = _read_parquet(path, wanted)
    if frame.empty:
        raise DataError(f"{path}: no data rows")
    try:
        return Interactions(
            user=_ids(frame[columns["user"]], "user"),
            item=_ids(frame[columns["item"]], "item"),
            timestamp=_timestamps(frame[columns["timestamp"]], timestamp_unit),
            rating=_ratings(frame[columns["rating"]]) if "rating" in columns else None,
            source=str(path),
        )
    except _BadValue as bad:
        raise _located_row(path, format, frame, bad) from None


# --- columns -------------------------------------------------------------------------------------


def _ids(values: pd.Series, role: str) -> np.ndarray:
    _reject_nulls(values, f"empty {role} id")
    if pd.api.types.is_integer_dtype(values):
        if pd.api.types.is_unsigned_integer_dtype(values) and values.max() > np.iinfo(np.int64).max:
            return values.astype(str).to_numpy(object)
        return values.to_numpy(np.int64)
    if _is_text(values):
        text = values.astype(str)
        if text.str.fullmatch(_CANONICAL_INTEGER).all():
            return text.astype("Int64").to_numpy(np.int64)  # via Arrow: far faster than astype(int64)
        return text.to_numpy(object)
    return values.astype(str).to_numpy(object)


def _timestamps(values: pd.Series, unit: str) -> np.ndarray:
    _reject_nulls(values, "empty timestamp")
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values):
        return _datetimes_to_seconds(values)
    if pd.api.types.is_bool_dtype(values):
        raise _BadValue(0, "timestamp is not a number")
    if pd.api.types.is_numeric_dtype(values):
        return _numbers_to_seconds(values, unit)
    text = values.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all():
        return _numbers_to_seconds(numbers, unit)
    if unit != "auto" or pd.notna(numbers.iloc[0]):
        raise _BadValue(_first(numbers.isna()), "timestamp is not a number")
    dates = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    if dates.isna().any():
        raise _BadValue(_first(dates.isna()), "timestamp is neither a number nor an ISO-8601 date/time")
    return _datetimes_to_seconds(dates)


def _numbers_to_seconds(values: pd.Series, unit: str) -> np.ndarray:
    if pd.api.types.is_integer_dtype(values):
        numbers = values.to_numpy(np.int64)
    else:
        numbers = values.to_numpy(np.float64)
        if not np.isfinite(numbers).all():
            raise _BadValue(_first(~np.isfinite(numbers)), "timestamp is not finite")
    if unit == "ms" or (unit == "auto" and np.abs(numbers).max() > MILLISECONDS_ABOVE):
        return numbers // 1000 if numbers.dtype == np.int64 else np.floor(numbers / 1000).astype(np.int64)
    return numbers if numbers.dtype == np.int64 else np.floor(numbers).astype(np.int64)


def _datetimes_to_seconds(values: pd.Series) -> np.ndarray:
    if not isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_localize("UTC")
    epoch = pd.Timestamp(0, tz="UTC")
    return ((values - epoch) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _ratings(values: pd.Series) -> np.ndarray:
    _reject_nulls(values, "empty rating")
    if pd.api.types.is_bool_dtype(values):
        raise _BadValue(0, "rating is not a number")
    if not pd.api.types.is_numeric_dtype(values):
        values = pd.to_numeric(values.astype(str).str.strip(), errors="coerce")
    numbers = values.to_numpy(np.float64, na_value=np.nan)
    if not np.isfinite(numbers).all():
        row = _first(~np.isfinite(numbers))
        raise _BadValue(row, "rating is not a number" if np.isnan(numbers[row]) else "rating is not finite")
    return numbers.astype(np.float32)


def _reject_nulls(values: pd.Series, problem: str) -> None:
    nulls = values.isna()
    if _is_text(values):
        nulls |= values.astype(str).str.strip() == ""
    if nulls.any():
        raise _BadValue(_first(nulls), problem)


def _is_text(values: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)


def _first(mask: pd.Series | np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _located_row(path: Path, format: str, frame: pd.DataFrame, bad: _BadValue) -> DataError:
    if format == "csv":
        line, text = _csv_record_at(path, bad.row)
        return located(path, line, bad.problem, text)
    row = frame.iloc[bad.row]
    text = ", ".join(f"{name}={_shown_value(value)}" for name, value in row.items())
    return located(path, None, f"row {bad.row + 1}: {bad.problem}", text)


def _shown_value(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    return "null" if pd.api.types.is_scalar(value) and pd.isna(value) else str(value)


# --- files ---------------------------------------------------------------------------------------


def _read_parquet(path: Path, wanted: list[str]) -> pd.DataFrame:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        _check_columns(path, wanted, pq.read_schema(path).names)
        return pq.read_table(path, columns=wanted).to_pandas()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(f"{path}: cannot read as Parquet: {error}") from None


def _read_csv(path: Path, wanted: list[str], id_columns: list[str]) -> pd.DataFrame:
    """The `wanted` columns (empty fields are NaN), read in chunks so only they are kept.

    Id columns are read as text, so that "007" and "7" stay apart; other columns are inferred.
    Every column is parsed so that pandas rejects rows with too many fields; a row with too few
    leaves the last column empty, which triggers a scan for the exact line.
    """
    header: list[str] = []
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
        _check_columns(path, wanted, header)
        chunks = pd.read_csv(
            path,
            dtype={column: str for column in id_columns},
            keep_default_na=False,
            na_values=[""],
            chunksize=_CSV_CHUNK_ROWS,
        )
        parts, short_rows_possible = [], False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)  # mixed columns are handled as text
            for chunk in chunks:
                short_rows_possible |= bool(chunk[header[-1]].isna().any())
                parts.append(chunk[wanted])
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (a CSV file needs a header row)") from None
    except UnicodeDecodeError as error:
        _raise_undecodable_line(path)
        raise DataError(f"{path}: not valid UTF-8 text: {error}") from None
    except (pd.errors.ParserError, ValueError) as error:
        if header:
            _raise_misshapen_record(path, len(header))
        raise DataError(f"{path}: cannot parse: {str(error).strip()}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from None
    if short_rows_possible:
        _raise_misshapen_record(path, len(header))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=wanted)


def _check_columns(path: Path, wanted: list[str], available: list[str]) -> None:
    absent = [column for column in wanted if column not in available]
    if absent:
        raise DataError(f"{path}: no column {absent[0]!r}; the columns are: {', '.join(map(str, available))}")


def _csv_records(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(1-based first line, raw text, fields) of each non-blank CSV record, the header first."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as handle:
        consumed: list[str] = []

        def lines() -> Iterator[str]:
            for line in handle:
                consumed.append(line)
                yield line

        reader = csv.reader(lines())
        try:
            for fields in reader:
                first_line = reader.line_num - len(consumed) + 1
                text = "".join(consumed).rstrip("\r\n")
                consumed.clear()
                if any(field.strip() for field in fields) or len(fields) > 1:
                    yield first_line, text, fields
        except csv.Error as error:
            raise located(path, reader.line_num - len(consumed) + 1, f"cannot parse: {error}", "".join(consumed)) from None


def _csv_record_at(path: Path, row: int) -> tuple[int | None, str | None]:
    """Line and text of data row `row` (0-based, after the header)."""
    for index, (line, text, _) in enumerate(_csv_records(path)):
        if index == row + 1:
            return line, text
    return None, None


def _raise_misshapen_record(path: Path, width: int) -> None:
    for index, (line, text, fields) in enumerate(_csv_records(path)):
        if index > 0 and len(fields) != width:
            if text.count('"') % 2:
                raise located(path, line, "a quoted field is not closed", text)
            raise located(path, line, f"expected {width} fields (as in the header), got {len(fields)}", text)


def _raise_undecodable_line(path: Path) -> None:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise located(path, number, "not valid UTF-8 text", raw.decode("utf-8", "replace").strip()) from None
