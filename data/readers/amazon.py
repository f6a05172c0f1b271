"""Amazon review data: JSON-lines reviews (2014/2018 and 2023 field names), ratings-only CSV,
and item metadata files."""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from data.errors import DataError, located
from data.interactions import Interactions
from data.readers.delimited import read_delimited

# Field names per release: user, item, time, rating, and the time unit (seconds per unit).
_SCHEMAS = {
    "2014/2018": ("reviewerID", "asin", "unixReviewTime", "overall", 1.0),
    "2023": ("user_id", "parent_asin", "timestamp", "rating", 1e-3),  # timestamps in milliseconds
}


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise DataError(f"{path}: cannot read: {error}") from None


def _schema_of(record: dict, path: Path, number: int, line: str) -> str:
    for name, (user, item, time, _, _) in _SCHEMAS.items():
        if user in record and time in record and (item in record or "asin" in record):
            return name
    raise located(path, number, "neither 2014/2018 (reviewerID, asin, unixReviewTime) nor 2023 "
                  "(user_id, parent_asin, timestamp) review fields", line.strip())


def read_amazon_reviews(path: Path, metadata_path: Path | None = None) -> Interactions:
    """Reviews from a JSON-lines file (optionally .gz); the schema is read off the first record."""
    path = Path(path)
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    ratings: list[float] = []
    schema = None
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise located(path, number, "not a JSON object", line.strip()) from None
        if not isinstance(record, dict):
            raise located(path, number, "not a JSON object", line.strip())
        if schema is None:
            schema = _schema_of(record, path, number, line)
        user_key, item_key, time_key, rating_key, unit = _SCHEMAS[schema]
        item = record.get(item_key, record.get("asin"))
        if record.get(user_key) is None or item is None or record.get(time_key) is None:
            raise located(path, number, f"missing {user_key}, {item_key} or {time_key}", line.strip())
        try:
            times.append(float(record[time_key]) * unit)
            ratings.append(float(record.get(rating_key, np.nan)))
        except (TypeError, ValueError):
            raise located(path, number, f"{time_key} or {rating_key} is not a number", line.strip()) from None
        users.append(str(record[user_key]))
        items.append(str(item))
    if schema is None:
        raise DataError(f"{path}: no reviews")
    rating = np.asarray(ratings, dtype=np.float32)
    return Interactions(
        user=np.asarray(users, dtype=object),
        item=np.asarray(items, dtype=object),
        timestamp=np.floor(np.asarray(times)).astype(np.int64),
        rating=None if np.all(np.isnan(rating)) else rating,
        item_metadata=read_amazon_metadata(metadata_path) if metadata_path else None,
        source=str(path),
    )


def read_amazon_ratings_csv(path: Path) -> Interactions:
    """The ratings-only files: no header, columns item,user,rating,time (seconds)."""
    kinds = {"item": "str", "user": "str", "rating": "float", "timestamp": "int"}
    frame = read_delimited(Path(path), sep=",", names=list(kinds), kinds=kinds)
    return Interactions(
        user=frame["user"].to_numpy(object),
        item=frame["item"].to_numpy(object),
        timestamp=frame["timestamp"].to_numpy(),
        rating=frame["rating"].to_numpy(np.float32),
        source=str(path),
    )


def read_amazon_metadata(path: Path) -> pd.DataFrame:
    """One row per item: item, title, and brand / price / categories when present. 2014 files
    hold Python dict literals, 2018/2023 files JSON; 2023 keys items by parent_asin."""
    path = Path(path)
    rows = []
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                raise located(path, number, "neither JSON nor a Python dict literal", line.strip()) from None
        item = record.get("parent_asin", record.get("asin")) if isinstance(record, dict) else None
        if item is None:
            raise located(path, number, "no asin or parent_asin", line.strip())
        row = {"item": str(item), "title": record.get("title")}
        for key in ("brand", "price", "categories", "main_category"):
            if key in record:
                row[key] = json.dumps(record[key]) if isinstance(record[key], (list, dict)) else record[key]
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no item records")
    return pd.DataFrame(rows)
