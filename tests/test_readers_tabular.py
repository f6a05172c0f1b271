"""Generic CSV / Parquet readers on tiny fixture files, and the --columns mapping."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.errors import DataError
from data.readers.tabular import parse_column_mapping, read_tabular

MAPPING = {"user": "u", "item": "i", "timestamp": "t"}


def csv_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def parquet_file(path: Path, columns: dict) -> Path:
    pd.DataFrame(columns).to_parquet(path, index=False)
    return path


def raises(message: str):
    return pytest.raises(DataError, match=f"^{re.escape(message)}$")


# --- the column mapping ----------------------------------------------------------------------------


def test_column_mapping_parses_with_spaces_and_optional_rating() -> None:
    assert parse_column_mapping(" user = uid,item=sku ,timestamp=when") == {"user": "uid", "item": "sku", "timestamp": "when"}
    assert parse_column_mapping("rating=r,timestamp=t,item=i,user=u")["rating"] == "r"


@pytest.mark.parametrize("text, message", [
    ("", "--columns is empty"),
    (" , ", "--columns is empty"),
    ("user=u,item=i", "--columns: missing timestamp"),
    ("user=u,item=i,timestamp=t,score=s", "--columns: unknown role 'score'; roles are user, item, timestamp, rating"),
    ("user=u,user=v,item=i,timestamp=t", "--columns: user is given twice"),
    ("user=u,item=u,timestamp=t", "--columns: column 'u' is given for both user and item"),
    ("user,item=i,timestamp=t", "--columns: 'user' is not ROLE=COLUMN"),
    ("user=,item=i,timestamp=t", "--columns: 'user=' is not ROLE=COLUMN"),
    ("user=u,,item=i,timestamp=t", "--columns: '' is not ROLE=COLUMN"),
])
def test_bad_column_mapping(text: str, message: str) -> None:
    with pytest.raises(DataError, match=f"^{re.escape(message)}"):
        parse_column_mapping(text)


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_values_order_types_quotes_and_iso_dates(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "events.csv", (
        'uid,sku,when,stars,note\n'
        '8,101,2024-01-02T03:04:05Z,4.5,"a, quoted\nnote over two lines"\n'
        '\n'
        '7,100,2024-01-02,5,x\n'
        '8,100,2024-01-02T05:04:05+02:00,1,""\n'
    ))
    got = read_tabular(path, "csv", {"user": "uid", "item": "sku", "timestamp": "when", "rating": "stars"})
    assert got.user.dtype == np.int64 and got.user.tolist() == [8, 7, 8]
    assert got.item.dtype == np.int64 and got.item.tolist() == [101, 100, 100]
    assert got.timestamp.dtype == np.int64 and got.timestamp.tolist() == [1704164645, 1704153600, 1704164645]
    assert got.rating.dtype == np.float32 and got.rating.tolist() == [4.5, 5.0, 1.0]
    assert got.source == str(path) and got.item_metadata is None


def test_csv_ids_that_are_not_plain_integers_stay_text(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "e.csv", "u,i,t\n007,B01,1\n7,-3,2\n")
    got = read_tabular(path, "csv", MAPPING)
    assert got.user.dtype == object and got.user.tolist() == ["007", "7"]  # 007 would lose its zeros
    assert got.item.dtype == object and got.item.tolist() == ["B01", "-3"]
    assert got.rating is None


@pytest.mark.parametrize("values, unit, seconds", [
    (["1700000000", "1700000001.9"], "auto", [1700000000, 1700000001]),  # seconds, floored
    (["1700000000123", "1700000001999"], "auto", [1700000000, 1700000001]),  # > 1e11: milliseconds
    (["1700000000", "1700000001999"], "auto", [1700000, 1700000001]),  # one column, one unit
    (["5000", "-1500"], "ms", [5, -2]),
    (["1700000000123", "5"], "s", [1700000000123, 5]),
    (["1970-01-01T00:00:01.9", "1969-12-31T23:59:59Z"], "auto", [1, -1]),
])
def test_csv_timestamp_units(tmp_path: Path, values: list[str], unit: str, seconds: list[int]) -> None:
    path = csv_file(tmp_path / "e.csv", "u,i,t\n" + "".join(f"a,b,{value}\n" for value in values))
    assert read_tabular(path, "csv", MAPPING, timestamp_unit=unit).timestamp.tolist() == seconds


def test_gzipped_csv(tmp_path: Path) -> None:
    path = tmp_path / "e.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("u,i,t\nx,y,10\n")
    got = read_tabular(path, "csv", MAPPING)
    assert got.user.tolist() == ["x"] and got.timestamp.tolist() == [10]


@pytest.mark.parametrize("rows, line, problem, text", [
    (["1,2,100", "1,3,later"], 3, "timestamp is not a number", "1,3,later"),
    (["1,2,2024-01-01", "1,3,someday"], 3, "timestamp is neither a number nor an ISO-8601 date/time", "1,3,someday"),
    (["1,2,100", ",3,101"], 3, "empty user id", ",3,101"),
    (["1,2,100", "1, ,101"], 3, "empty item id", "1, ,101"),
    (["1,2,", "1,3,101"], 2, "empty timestamp", "1,2,"),
    (["1,2,100", "1,3,101,extra"], 3, "expected 3 fields (as in the header), got 4", "1,3,101,extra"),
    (["1,2,100", "1,3"], 3, "expected 3 fields (as in the header), got 2", "1,3"),
    (["1,2,100", '1,"3,101', "2,4,102"], 3, "a quoted field is not closed", '1,"3,101\n2,4,102'),
])
def test_bad_csv_row_names_file_line_and_text(tmp_path: Path, rows: list[str], line: int, problem: str, text: str) -> None:
    path = csv_file(tmp_path / "e.csv", "u,i,t\n" + "".join(row + "\n" for row in rows))
    with raises(f"{path}:{line}: {problem}: {text!r}"):
        read_tabular(path, "csv", MAPPING)


def test_bad_csv_line_counts_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "e.csv", 'u,i,t,r,note\n1,2,100,5,"two\nlines"\n\n1,3,101,good,x\n')
    with raises(f"{path}:5: rating is not a number: '1,3,101,good,x'"):
        read_tabular(path, "csv", {**MAPPING, "rating": "r"})


def test_unit_ms_rejects_dates(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "e.csv", "u,i,t\n1,2,2024-01-01\n")
    with raises(f"{path}:2: timestamp is not a number: '1,2,2024-01-01'"):
        read_tabular(path, "csv", MAPPING, timestamp_unit="ms")


def test_csv_file_level_errors(tmp_path: Path) -> None:
    path = csv_file(tmp_path / "e.csv", "u,i,t\n1,2,3\n")
    with raises(f"{path}: no column 'when'; the columns are: u, i, t"):
        read_tabular(path, "csv", {**MAPPING, "timestamp": "when"})
    with raises(f"{tmp_path / 'absent.csv'}: file not found"):
        read_tabular(tmp_path / "absent.csv", "csv", MAPPING)
    with raises(f"{csv_file(tmp_path / 'empty.csv', '')}: empty file (a CSV file needs a header row)"):
        read_tabular(tmp_path / "empty.csv", "csv", MAPPING)
    with raises(f"{csv_file(tmp_path / 'head.csv', 'u,i,t')}: no data rows"):
        read_tabular(tmp_path / "head.csv", "csv", MAPPING)
    with pytest.raises(DataError, match="tabular format must be one of csv, parquet, not 'tsv'"):
        read_tabular(path, "tsv", MAPPING)
    with pytest.raises(DataError, match="timestamp unit must be one of auto, s, ms, not 'us'"):
        read_tabular(path, "csv", MAPPING, timestamp_unit="us")


def test_csv_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b"u,i,t\n1,2,3\n1,\xff\xfe,4\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: not valid UTF-8 text"):
        read_tabular(path, "csv", MAPPING)


# --- Parquet -------------------------------------------------------------------------------------


def test_parquet_integer_ids_millisecond_times_and_rating(tmp_path: Path) -> None:
    path = parquet_file(tmp_path / "e.parquet", {
        "u": np.array([3, 1, 3], dtype=np.int32), "i": [10, 20, 10],
        "ts": [1_700_000_000_123, 1_700_000_001_999, 1_700_000_001_000], "r": np.array([1.5, 2, 3], np.float64),
    })
    got = read_tabular(path, "parquet", {"user": "u", "item": "i", "timestamp": "ts", "rating": "r"})
    assert got.user.dtype == np.int64 and got.user.tolist() == [3, 1, 3]
    assert got.item.dtype == np.int64 and got.item.tolist() == [10, 20, 10]
    assert got.timestamp.tolist() == [1_700_000_000, 1_700_000_001, 1_700_000_001]
    assert got.rating.dtype == np.float32 and got.rating.tolist() == [1.5, 2.0, 3.0]


def test_parquet_text_ids_and_timestamp_columns(tmp_path: Path) -> None:
    naive = pd.DatetimeIndex([pd.Timestamp("2024-01-02 03:04:05.9"), pd.Timestamp("1970-01-01 00:00:10")])
    path = parquet_file(tmp_path / "e.parquet", {
        "u": ["a", "b"], "i": ["007", "x"], "naive": naive, "aware": naive.tz_localize("Europe/Berlin"),
        "text": ["2024-01-02T03:04:05Z", "1970-01-01"],
    })
    read = lambda column: read_tabular(path, "parquet", {"user": "u", "item": "i", "timestamp": column})
    got = read("naive")
    assert got.user.dtype == object and got.user.tolist() == ["a", "b"] and got.item.tolist() == ["007", "x"]
    assert got.timestamp.tolist() == [1704164645, 10] and got.rating is None
    assert read("aware").timestamp.tolist() == [1704164645 - 3600, 10 - 3600]
    assert read("text").timestamp.tolist() == [1704164645, 0]


@pytest.mark.parametrize("columns, problem, text", [
    ({"u": ["a", None], "i": ["x", "y"], "t": [1, 2]}, "row 2: empty user id", "u=null, i='y', t=2"),
    ({"u": ["a", "b"], "i": ["x", "y"], "t": [1.0, np.nan]}, "row 2: empty timestamp", "u='b', i='y', t=null"),
    ({"u": ["a", "b"], "i": ["x", "y"], "t": ["2024-01-01", "noon"]},
     "row 2: timestamp is neither a number nor an ISO-8601 date/time", "u='b', i='y', t='noon'"),
])
def test_bad_parquet_row_names_file_row_and_values(tmp_path: Path, columns: dict, problem: str, text: str) -> None:
    path = parquet_file(tmp_path / "e.parquet", columns)
    with pytest.raises(DataError) as error:
        read_tabular(path, "parquet", MAPPING)
    assert str(error.value) == f"{path}: {problem}: {text!r}"


def test_parquet_file_level_errors(tmp_path: Path) -> None:
    path = parquet_file(tmp_path / "e.parquet", {"u": [1], "i": [2], "t": [3]})
    with raises(f"{path}: no column 'when'; the columns are: u, i, t"):
        read_tabular(path, "parquet", {**MAPPING, "timestamp": "when"})
    not_parquet = csv_file(tmp_path / "e2.parquet", "u,i,t\n1,2,3\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(not_parquet))}: cannot read as Parquet"):
        read_tabular(not_parquet, "parquet", MAPPING)


def test_data_stats_on_a_malformed_csv_is_one_line_and_status_2(tmp_path: Path, capsys, use_lab_cache) -> None:
    from data.__main__ import main

    path = csv_file(tmp_path / "e.csv", "u,i,t\n1,2,100\n1,3,later\n")
    assert main(["stats", str(path), "--format", "csv", "--columns", "user=u,item=i,timestamp=t"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # a progress line, then the error
    assert [line for line in lines if not line.startswith("preparing ")] == \
        [f"error: {path}:3: timestamp is not a number: '1,3,later'"]
