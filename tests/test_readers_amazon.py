"""Amazon readers on tiny fixture files: 2014/2018 and 2023 reviews, ratings CSV, metadata."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from data.errors import DataError
from data.readers.amazon import read_amazon_metadata, read_amazon_ratings_csv, read_amazon_reviews


def write(path: Path, lines: list, gz: bool = False) -> Path:
    """One line per entry: dicts as JSON, strings as they are."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def values(column) -> list:
    """A column as a list, missing values (None or NaN, depending on the dtype) as None."""
    return [None if value is None or value != value else value for value in column.tolist()]


def review_2014(user: str, item: str, time: int, rating: float) -> dict:
    return {"reviewerID": user, "asin": item, "reviewerName": "n", "helpful": [0, 0], "reviewText": "fine, \"ok\"",
            "overall": rating, "summary": "s", "unixReviewTime": time, "reviewTime": "05 13, 2014"}


def test_2014_reviews_gz_keep_file_order_and_types(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews_Beauty_5.json.gz", [
        review_2014("A2", "B02", 1400000000, 5.0),
        review_2014("A1", "B01", 1300000000, 3.0),
        review_2014("A2", "B01", 1400000000, 1.0),
    ], gz=True)
    got = read_amazon_reviews(path)
    assert got.user.dtype == object and got.user.tolist() == ["A2", "A1", "A2"]
    assert got.item.dtype == object and got.item.tolist() == ["B02", "B01", "B01"]
    assert got.timestamp.dtype == np.int64 and got.timestamp.tolist() == [1400000000, 1300000000, 1400000000]
    assert got.rating.dtype == np.float32 and got.rating.tolist() == [5.0, 3.0, 1.0]
    assert got.item_metadata is None and got.source == str(path)


def test_2023_reviews_milliseconds_floor_and_parent_asin_fallback(tmp_path: Path) -> None:
    path = write(tmp_path / "All_Beauty.jsonl", [
        {"rating": 4.0, "title": "t", "text": "x", "asin": "C1", "parent_asin": "P1", "user_id": "U1",
         "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": True},
        {"rating": 2.0, "asin": "C2", "user_id": "U1", "timestamp": 1588687729999},
        {"rating": 1.0, "asin": "C3", "parent_asin": "P3", "user_id": "U2", "timestamp": 1588687730000},
    ])
    got = read_amazon_reviews(path)
    assert got.user.tolist() == ["U1", "U1", "U2"]
    assert got.item.tolist() == ["P1", "C2", "P3"]
    assert got.timestamp.tolist() == [1588687728, 1588687729, 1588687730]
    assert got.rating.tolist() == [4.0, 2.0, 1.0]


def test_schema_comes_from_the_first_record(tmp_path: Path) -> None:
    # A 2014 file whose first record also carries a "timestamp" key stays in seconds.
    path = write(tmp_path / "r.json", [
        {"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1400000000, "overall": 4, "timestamp": 7},
        {"reviewerID": "A1", "asin": "B2", "unixReviewTime": 1400000001, "overall": 5},
    ])
    assert read_amazon_reviews(path).timestamp.tolist() == [1400000000, 1400000001]
    # Once the file is read as 2023 reviews, a record with only 2014 names is missing user_id.
    mixed = write(tmp_path / "mixed.jsonl", [
        {"user_id": "U1", "parent_asin": "P1", "timestamp": 1588687728923, "rating": 5},
        {"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1400000000, "overall": 4},
    ])
    with pytest.raises(DataError, match=r"mixed\.jsonl:2: missing user_id \(2023 reviews\)"):
        read_amazon_reviews(mixed)


def test_ratings_are_none_without_any_and_nan_where_one_is_missing(tmp_path: Path) -> None:
    none = write(tmp_path / "none.jsonl", [{"user_id": "U1", "parent_asin": "P1", "timestamp": 1000}])
    assert read_amazon_reviews(none).rating is None
    some = write(tmp_path / "some.jsonl", [{"user_id": "U1", "parent_asin": "P1", "timestamp": 1000},
                                           {"user_id": "U1", "parent_asin": "P2", "timestamp": 2000, "rating": 3}])
    rating = read_amazon_reviews(some).rating
    assert math.isnan(rating[0]) and rating[1] == 3.0


GOOD_2014 = {"reviewerID": "A0", "asin": "B0", "overall": 1.0, "unixReviewTime": 1}


@pytest.mark.parametrize("line, problem", [
    ('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1', "not a JSON object"),
    ('["A1", "B1", 1]', "not a JSON object"),
    ('{"reviewerID": "A1", "asin": "B1", "overall": 2}', "missing unixReviewTime (2014/2018 reviews)"),
    ('{"reviewerID": "A1", "unixReviewTime": 1, "overall": 2}', "missing asin (2014/2018 reviews)"),
    ('{"reviewerID": "", "asin": "B1", "unixReviewTime": 1}', "missing reviewerID (2014/2018 reviews)"),
    ('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": "soon", "overall": 2}', "unixReviewTime is not a number"),
    ('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1, "overall": "great"}', "overall is not a number"),
])
def test_bad_review_line_names_file_line_and_text(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path / "reviews.json", [GOOD_2014, "", line])  # the blank line still counts
    with pytest.raises(DataError) as error:
        read_amazon_reviews(path)
    assert str(error.value) == f"{path}:3: {problem}: {line!r}"


def test_bad_first_record_and_unreadable_files(tmp_path: Path) -> None:
    unknown = write(tmp_path / "u.json", [{"user": "A1", "item": "B1", "time": 1}])
    with pytest.raises(DataError, match=r"u\.json:1: the first review has neither reviewerID .* nor user_id"):
        read_amazon_reviews(unknown)
    empty = write(tmp_path / "empty.json", [])
    with pytest.raises(DataError, match=r"empty\.json: no reviews"):
        read_amazon_reviews(empty)
    with pytest.raises(DataError, match=r"absent\.json: file not found"):
        read_amazon_reviews(tmp_path / "absent.json")
    not_gzip = tmp_path / "fake.json.gz"
    not_gzip.write_text(json.dumps(GOOD_2014))
    with pytest.raises(DataError, match=r"fake\.json\.gz: cannot read"):
        read_amazon_reviews(not_gzip)


def test_2014_ratings_csv_without_header(tmp_path: Path) -> None:
    path = tmp_path / "ratings_Beauty.csv"
    path.write_text("0205616461,A39HTATAQ9V7YF,5.0,1369699200\n0558925278,A3JM6GV9MNOF9X,3.0,1355443200\n"
                    "0205616461,A3JM6GV9MNOF9X,4.0,1355443200\n")
    got = read_amazon_ratings_csv(path)
    assert got.item.tolist() == ["0205616461", "0558925278", "0205616461"]  # leading zeros kept
    assert got.user.tolist() == ["A39HTATAQ9V7YF", "A3JM6GV9MNOF9X", "A3JM6GV9MNOF9X"]
    assert got.timestamp.dtype == np.int64 and got.timestamp.tolist() == [1369699200, 1355443200, 1355443200]
    assert got.rating.dtype == np.float32 and got.rating.tolist() == [5.0, 3.0, 4.0]


def test_2023_ratings_csv_with_header_gz_in_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "Beauty.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("user_id,parent_asin,rating,timestamp\nU1,P1,5.0,1588687728923\nU2,P2,1.0,1588687730000\n")
    got = read_amazon_ratings_csv(path)
    assert got.user.tolist() == ["U1", "U2"] and got.item.tolist() == ["P1", "P2"]
    assert got.timestamp.tolist() == [1588687728, 1588687730] and got.rating.tolist() == [5.0, 1.0]


@pytest.mark.parametrize("line, problem", [
    ("0205616461,A39HTATAQ9V7YF,5.0", "expected 4 fields, got 3"),
    ("0205616461,A39HTATAQ9V7YF,5.0,yesterday", "field timestamp is not an integer"),
])
def test_bad_ratings_csv_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(f"0558925278,A3JM6GV9MNOF9X,3.0,1355443200\n{line}\n")
    with pytest.raises(DataError) as error:
        read_amazon_ratings_csv(path)
    assert str(error.value) == f"{path}:2: {problem}: {line!r}"


def test_empty_ratings_csv(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("\n")
    with pytest.raises(DataError, match=r"ratings\.csv: no ratings \(the file is empty\)"):
        read_amazon_ratings_csv(path)


def test_2014_metadata_python_literals_attached_to_reviews(tmp_path: Path) -> None:
    reviews = write(tmp_path / "reviews_Beauty_5.json", [review_2014("A1", "B01", 1, 5.0), review_2014("A2", "B02", 2, 3.0)])
    meta = tmp_path / "meta_Beauty.json.gz"
    with gzip.open(meta, "wt") as handle:
        handle.write("{'asin': 'B01', 'title': \"Tom's Soap\", 'price': 3.5, 'salesRank': {'Beauty': 10}, "
                     "'categories': [['Beauty', 'Bath'], ['Beauty', 'Skin']]}\n"
                     "{'asin': 'B02', 'title': 'Brush', 'brand': 'Acme'}\n")
    got = read_amazon_reviews(reviews, metadata_path=meta)
    frame = got.item_metadata
    assert frame.columns.tolist() == ["item", "title", "categories", "brand", "price"]
    assert frame["item"].tolist() == ["B01", "B02"]
    assert frame["title"].tolist() == ["Tom's Soap", "Brush"]
    assert values(frame["categories"]) == ["Beauty|Bath|Skin", None]
    assert values(frame["brand"]) == [None, "Acme"]
    assert frame["price"].dtype == np.float64 and frame["price"][0] == 3.5 and np.isnan(frame["price"][1])


def test_2018_metadata_json_prices_and_duplicates(tmp_path: Path) -> None:
    meta = write(tmp_path / "meta_Books.json", [
        {"asin": "X1", "title": "One", "category": ["Books", "Fiction"], "price": "$1,012.99", "brand": "Pub"},
        {"asin": "X2", "title": "Two", "category": [], "price": "$1.00 - $2.00"},
        {"asin": "X1", "title": "One again"},
    ])
    frame = read_amazon_metadata(meta)
    assert frame["item"].tolist() == ["X1", "X2"] and frame["title"].tolist() == ["One", "Two"]  # first wins
    assert values(frame["categories"]) == ["Books|Fiction", None]
    assert frame["price"][0] == 1012.99 and np.isnan(frame["price"][1])  # a range is no single price


def test_2023_metadata_by_parent_asin(tmp_path: Path) -> None:
    meta = write(tmp_path / "meta_All_Beauty.jsonl", [
        {"main_category": "All Beauty", "title": "Lotion", "price": None, "categories": [],
         "details": {"Brand": "Glow"}, "parent_asin": "P1"},
        {"main_category": "All Beauty", "title": "Comb", "price": 4.0, "categories": ["Beauty", "Tools"],
         "details": {}, "parent_asin": "P2"},
    ])
    frame = read_amazon_metadata(meta)
    assert frame["item"].tolist() == ["P1", "P2"]
    assert frame["categories"].tolist() == ["All Beauty", "Beauty|Tools"]  # main_category when no categories
    assert values(frame["brand"]) == ["Glow", None]
    assert np.isnan(frame["price"][0]) and frame["price"][1] == 4.0


def test_metadata_without_optional_fields_has_item_and_title_only(tmp_path: Path) -> None:
    frame = read_amazon_metadata(write(tmp_path / "meta.json", [{"asin": "B1"}, {"asin": "B2", "title": "T"}]))
    assert frame.columns.tolist() == ["item", "title"] and values(frame["title"]) == [None, "T"]


@pytest.mark.parametrize("line, problem", [
    ('{"title": "nameless"}', "no asin or parent_asin"),
    ("{'asin': 'B2', 'title': broken}", "neither JSON nor a Python dict literal"),
    ("['B2']", "not an object"),
])
def test_bad_metadata_line(tmp_path: Path, line: str, problem: str) -> None:
    meta = write(tmp_path / "meta.json", ["{'asin': 'B1'}", line])
    with pytest.raises(DataError, match=re.escape(f"meta.json:2: {problem}: {line!r}")):
        read_amazon_metadata(meta)


def test_a_folder_with_reviews_and_metadata_attaches_the_metadata(tmp_path: Path) -> None:
    from data.sources import load_interactions

    write(tmp_path / "reviews_Beauty_5.json", [review_2014("A1", "B01", 1, 5.0), review_2014("A1", "B02", 2, 3.0)])
    write(tmp_path / "meta_Beauty.json", [{"asin": "B01", "title": "Soap", "brand": "Acme", "price": 2.0,
                                           "categories": [["Beauty", "Bath"]]},
                                          {"asin": "B02", "title": "Brush", "categories": [["Beauty"]]}])
    got = load_interactions(str(tmp_path))
    assert got.item_metadata["item"].tolist() == ["B01", "B02"]
    assert values(got.item_metadata["categories"]) == ["Beauty|Bath", "Beauty"]
    write(tmp_path / "meta_Other.json", [{"asin": "B01", "title": "x"}])
    with pytest.raises(DataError, match="at most one Amazon metadata file"):
        load_interactions(str(tmp_path))
