"""Amazon review data: JSON-lines reviews (2014/2018 and 2023 field names), ratings-only CSV
files, and item metadata files (meta_*.json[.gz])."""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from data.errors import DataError, located
from data.interactions import Interactions
from data.readers.delimited import read_delimited


@dataclasses.dataclass(frozen=True)
class _ReviewSchema:
    name: str
    user: str
    items: tuple[str, ...]  # the first one present names the item
    time: str
    rating: str
    time_per_second: int  # time units per second


_SCHEMA_2014 = _ReviewSchema("2014/2018", "reviewerID", ("asin",), "unixReviewTime", "overall", 1)
_SCHEMA_2023 = _ReviewSchema("2023", "user_id", ("parent_asin", "asin"), "timestamp", "rating", 1000)

# The header of the 2023 ratings-only CSV files (the 2014/2018 ones have no header).
_CSV_2023_COLUMNS = ("user_id", "parent_asin", "rating", "timestamp")
_PRICE = re.compile(r"\$?\s*(\d[\d,]*(?:\.\d+)?|\.\d+)")


def read_amazon_reviews(path: Path, metadata_path: Path | None = None) -> Interactions:
    """Reviews from a JSON-lines file (optionally .gz), one interaction per line, file order kept.

    The schema is read off the first record: 2014/2018 files name the fields reviewerID / asin /
    unixReviewTime (seconds) / overall, 2023 files user_id / parent_asin (asin when absent) /
    timestamp (milliseconds, floored to seconds) / rating. A missing rating is NaN; the rating is
    None when no record has one. metadata_path: a meta_*.json[.gz] file to attach as item_metadata.
    """
    path = Path(path)
    users: list[str] = []
    items: list[str] = []
    seconds: list[int] = []
    ratings: list[float] = []
    schema: _ReviewSchema | None = None
    for number, raw in _numbered_lines(path):
        record = _json_object(path, number, raw)
        if schema is None:
            schema = _review_schema(path, number, raw, record)
        user, item, time = _required_fields(path, number, raw, record, schema)
        try:
            seconds.append(_to_seconds(time, schema.time_per_second))
        except (TypeError, ValueError, OverflowError):
            raise located(path, number, f"{schema.time} is not a number", _shown(raw)) from None
        try:
            ratings.append(_to_rating(record.get(schema.rating)))
        except (TypeError, ValueError):
            raise located(path, number, f"{schema.rating} is not a number", _shown(raw)) from None
        users.append(user)
        items.append(item)
    if schema is None:
        raise DataError(f"{path}: no reviews (the file is empty)")
    rating = np.asarray(ratings, dtype=np.float32)
    return Interactions(
        user=_object_array(users),
        item=_object_array(items),
        timestamp=np.asarray(seconds, dtype=np.int64),
        rating=None if np.isnan(rating).all() else rating,
        item_metadata=None if metadata_path is None else read_amazon_metadata(metadata_path),
        source=str(path),
    )


def read_amazon_ratings_csv(path: Path) -> Interactions:
    """A ratings-only CSV file (optionally .gz).

    2014/2018 files have no header and the columns item,user,rating,time (seconds); 2023 files
    have the header user_id,parent_asin,rating,timestamp (milliseconds, floored to seconds) and
    possibly more columns after those.
    """
    path = Path(path)
    first_line = _first_line(path)
    if not first_line:
        raise DataError(f"{path}: no ratings (the file is empty)")
    header = first_line.split(",")
    if header[: len(_CSV_2023_COLUMNS)] == list(_CSV_2023_COLUMNS):
        kinds = {"user_id": "str", "parent_asin": "str", "rating": "float", "timestamp": "int"}
        frame = read_delimited(path, sep=",", names=header, kinds=kinds, header_lines=1)
        user, item, per_second = frame["user_id"], frame["parent_asin"], 1000
    else:
        kinds = {"item": "str", "user": "str", "rating": "float", "timestamp": "int"}
        frame = read_delimited(path, sep=",", names=list(kinds), kinds=kinds)
        user, item, per_second = frame["user"], frame["item"], 1
    return Interactions(
        user=user.to_numpy(object),
        item=item.to_numpy(object),
        timestamp=frame["timestamp"].to_numpy(np.int64) // per_second,
        rating=frame["rating"].to_numpy(np.float32),
        source=str(path),
    )


def read_amazon_metadata(path: Path) -> pd.DataFrame:
    """One row per item (first record wins) from a meta_*.json[.gz] file.

    Columns: item (parent_asin, else asin), title, and when the file has them: categories (the
    category names flattened and joined with "|", like MovieLens genres), brand (or the 2023
    details' Brand) and price (a float; NaN when absent or not a single amount such as a range).
    2014 files hold Python dict literals, 2018/2023 files JSON; each line may be either.
    """
    path = Path(path)
    columns: dict[str, list[Any]] = {"item": [], "title": [], "categories": [], "brand": [], "price": []}
    present = {"item", "title"}
    parse = _meta_parsers()
    for number, raw in _numbered_lines(path):
        record = parse(path, number, raw)
        item = record.get("parent_asin") or record.get("asin")
        if not item:
            raise located(path, number, "no asin or parent_asin", _shown(raw))
        fields = _metadata_fields(record)
        present.update(name for name, value in fields.items() if value is not None)
        columns["item"].append(str(item))
        columns["title"].append(_text(record.get("title")))
        for name, value in fields.items():
            columns[name].append(value)
    if not columns["item"]:
        raise DataError(f"{path}: no item records (the file is empty)")
    frame = pd.DataFrame({name: values for name, values in columns.items() if name in present})
    if "price" in frame:
        frame["price"] = frame["price"].astype(np.float64)
    return frame.drop_duplicates("item", keep="first").reset_index(drop=True)


# --- reviews -------------------------------------------------------------------------------------


def _review_schema(path: Path, number: int, raw: bytes, record: dict) -> _ReviewSchema:
    if _SCHEMA_2014.user in record:
        return _SCHEMA_2014
    if _SCHEMA_2023.user in record:
        return _SCHEMA_2023
    raise located(path, number, "the first review has neither reviewerID (2014/2018 reviews) nor "
                  "user_id (2023 reviews)", _shown(raw))


def _required_fields(path: Path, number: int, raw: bytes, record: dict, schema: _ReviewSchema) -> tuple[str, str, Any]:
    user = record.get(schema.user)
    item = next((record[key] for key in schema.items if record.get(key)), None)
    time = record.get(schema.time)
    for name, value in ((schema.user, user), ("/".join(schema.items), item), (schema.time, time)):
        if value is None or value == "":
            raise located(path, number, f"missing {name} ({schema.name} reviews)", _shown(raw))
    return str(user), str(item), time


def _to_seconds(time: Any, per_second: int) -> int:
    """Whole seconds (floored) from an int, float or numeric string in units of 1/per_second s."""
    if type(time) is int:
        return time // per_second
    if isinstance(time, bool):
        raise TypeError("a boolean is not a time")
    if isinstance(time, str):
        time = time.strip()
        try:
            return int(time) // per_second
        except ValueError:
            pass
    value = float(time)
    if not math.isfinite(value):
        raise ValueError("not finite")
    return math.floor(value / per_second)


def _to_rating(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise TypeError("a boolean is not a rating")
    return float(value)


def _object_array(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


# --- metadata ------------------------------------------------------------------------------------


def _meta_parsers() -> Callable[[Path, int, bytes], dict]:
    """A line parser that tries JSON and Python literals, the one that worked last time first."""
    order = [_loads_json, _loads_python]

    def parse(path: Path, number: int, raw: bytes) -> dict:
        for loads in list(order):
            try:
                record = loads(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if loads is not order[0]:
                order.reverse()
            if not isinstance(record, dict):
                raise located(path, number, "not an object", _shown(raw))
            return record
        raise located(path, number, "neither JSON nor a Python dict literal", _shown(raw))

    return parse


def _loads_json(raw: bytes) -> Any:
    return json.loads(raw)


def _loads_python(raw: bytes) -> Any:
    return ast.literal_eval(raw.decode("utf-8").strip())


def _metadata_fields(record: dict) -> dict[str, Any]:
    """categories / brand / price of one metadata record, None where it has none."""
    categories = _flat_names(record.get("categories")) or _flat_names(record.get("category"))
    if not categories and record.get("main_category"):
        categories = [str(record["main_category"])]
    details = record.get("details")
    brand = record.get("brand") or (details.get("Brand") if isinstance(details, dict) else None)
    return {
        "categories": "|".join(dict.fromkeys(categories)) or None,
        "brand": _text(brand) or None,
        "price": _price(record.get("price")),
    }


def _flat_names(value: Any) -> list[str]:
    """Category names from a name, a list of names (2018/2023) or a list of paths (2014)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [name for part in value for name in _flat_names(part)]
    return [str(value)]


def _price(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = _PRICE.fullmatch(str(value).strip())
    return float(match.group(1).replace(",", "")) if match else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# --- files ---------------------------------------------------------------------------------------


def _numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line) of every non-blank line of a text or .gz file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw and not raw.isspace():
                    yield number, raw
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read after line {number}: {error}") from None


def _first_line(path: Path) -> str:
    for _, raw in _numbered_lines(path):
        return raw.decode("utf-8", "replace").strip()
    return ""


def _json_object(path: Path, number: int, raw: bytes) -> dict:
    try:
        record = json.loads(raw)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise located(path, number, "not a JSON object", _shown(raw)) from None
    if not isinstance(record, dict):
        raise located(path, number, "not a JSON object", _shown(raw))
    return record


def _shown(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").strip()
