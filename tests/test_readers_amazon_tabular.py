"""Amazon reviews (2014/2018 and 2023 schemas, ratings CSV, metadata) and generic CSV/Parquet."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.errors import DataError
from data.readers.amazon import read_amazon_metadata, read_amazon_ratings_csv, read_amazon_reviews
from data.readers.tabular import parse_column_mapping, read_tabular
from data.sources import detect_format, read_path


def json_lines(path: Path, records: list, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def test_2014_reviews_gz_with_python_literal_metadata(tmp_path: Path) -> None:
    reviews = json_lines(tmp_path / "reviews_Beauty_5.json.gz", [
        {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000, "reviewText": "x"},
        {"reviewerID": "A2", "asin": "B02", "overall": 3.0, "unixReviewTime": 1300000000},
    ], gz=True)
    meta = tmp_path / "meta_Beauty.json"
    meta.write_text("{'asin': 'B01', 'title': 'Soap', 'price': 3.5, 'categories': [['Beauty', 'Bath']]}\n"
                    "{'asin': 'B02', 'title': 'Brush'}\n")
    got = read_amazon_reviews(reviews, metadata_path=meta)
    assert got.user.tolist() == ["A1", "A2"] and got.item.tolist() == ["B01", "B02"]
    assert got.timestamp.tolist() == [1400000000, 1300000000] and got.rating.tolist() == [5.0, 3.0]
    assert got.item_metadata["title"].tolist() == ["Soap", "Brush"]
    assert json.loads(got.item_metadata["categories"][0]) == [["Beauty", "Bath"]]
    assert detect_format(reviews) == "amazon"


def test_2023_reviews_milliseconds_and_parent_asin(tmp_path: Path) -> None:
    path = json_lines(tmp_path / "All_Beauty.jsonl", [
        {"user_id": "U1", "parent_asin": "P1", "asin": "C1", "rating": 4.0, "timestamp": 1588687728923},
        {"user_id": "U1", "asin": "C2", "rating": 2.0, "timestamp": 1588687729999},
    ])
    got = read_amazon_reviews(path)
    assert got.item.tolist() == ["P1", "C2"]  # parent_asin, falling back to asin
    assert got.timestamp.tolist() == [1588687728, 1588687729]


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not a JSON object"),
    ('{"reviewerID": "A1", "asin": "B1"}', "missing reviewerID, asin or unixReviewTime"),
    ('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": "soon", "overall": 1}', "is not a number"),
])
def test_bad_review_lines_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    good = {"reviewerID": "A0", "asin": "B0", "overall": 1.0, "unixReviewTime": 1}
    path = json_lines(tmp_path / "r.json", [good, line])
    with pytest.raises(DataError, match=rf"r.json:2: .*{problem}"):
        read_amazon_reviews(path)


def test_ratings_only_csv(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Beauty.csv"
    path.write_text("0205616461,A39HTATAQ9V7YF,5.0,1369699200\n0558925278,A3JM6GV9MNOF9X,3.0,1355443200\n")
    got = read_amazon_ratings_csv(path)
    assert got.item.tolist() == ["0205616461", "0558925278"] and got.user.tolist()[0] == "A39HTATAQ9V7YF"
    assert got.timestamp.tolist() == [1369699200, 1355443200]
    bad = tmp_path / "bad.csv"
    bad.write_text("0205616461,A39HTATAQ9V7YF,5.0\n")
    with pytest.raises(DataError, match="bad.csv:1: expected 4 fields, got 3"):
        read_amazon_ratings_csv(bad)


def test_metadata_without_an_id_is_an_error(tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text('{"title": "nameless"}\n')
    with pytest.raises(DataError, match="meta.json:1: no asin or parent_asin"):
        read_amazon_metadata(meta)


def test_column_mapping() -> None:
    assert parse_column_mapping("user=u, item=i,timestamp=t,rating=r") == {"user": "u", "item": "i", "timestamp": "t", "rating": "r"}
    for text, message in (("user=u,item=i", "missing timestamp"), ("user=u,item=i,timestamp=t,score=s", "unknown role 'score'"),
                          ("user=u,user=v,item=i,timestamp=t", "user is given twice"), ("user", "is not ROLE=COLUMN")):
        with pytest.raises(DataError, match=message):
            parse_column_mapping(text)


def test_csv_with_dates_quotes_and_integer_ids(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text('uid,sku,when,stars,note\n7,100,2024-01-02T03:04:05Z,4,"a, quoted note"\n8,101,2024-01-02,5,x\n')
    got = read_path(path, "csv", parse_column_mapping("user=uid,item=sku,timestamp=when,rating=stars"))
    assert got.user.dtype == np.int64 and got.user.tolist() == [7, 8] and got.item.tolist() == [100, 101]
    assert got.timestamp.tolist() == [1704164645, 1704153600] and got.rating.tolist() == [4.0, 5.0]


def test_parquet_with_millisecond_times(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "ts": [1_700_000_000_123, 1_700_000_001_999]}).to_parquet(path)
    got = read_tabular(path, "parquet", {"user": "u", "item": "i", "timestamp": "ts"})
    assert got.timestamp.tolist() == [1_700_000_000, 1_700_000_001] and got.rating is None
    assert got.user.tolist() == ["a", "b"]


def test_tabular_errors_name_file_row_and_value(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("u,i,t\n1,2,100\n1,3,later\n")
    mapping = {"user": "u", "item": "i", "timestamp": "t"}
    with pytest.raises(DataError, match=r"e.csv:3: timestamp 'later' is not a number"):
        read_tabular(path, "csv", mapping)
    with pytest.raises(DataError, match=r"no column 'when'; columns are u, i, t"):
        read_tabular(path, "csv", {**mapping, "timestamp": "when"})
    empty_id = tmp_path / "n.csv"
    empty_id.write_text("u,i,t\n1,2,100\n,3,101\n")
    with pytest.raises(DataError, match=r"n.csv:3: empty user id"):
        read_tabular(empty_id, "csv", mapping)
