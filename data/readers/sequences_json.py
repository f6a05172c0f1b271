"""Ordered sequences as one JSON object, `{user: [item, item, ...]}` in time order: the form most
generative-recommendation repositories share (TIGER's, genrec's, tiger-cf's `inter.json`).

There are no timestamps: an event's position in its user's list stands in for its time (0, 1, 2,
...), and the interactions say so (`properties["has_timestamps"] == 0`), so that time features
can be turned off and reports do not show positions as dates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from data.errors import DataError
from data.interactions import Interactions

# The start of such a file: an object whose first value is a list. Amazon's JSON-lines reviews
# start with an object too, but their first field is a string or a number.
_SEQUENCES_START = re.compile(rb'\A\s*\{\s*"(?:[^"\\]|\\.)*"\s*:\s*\[')
_SNIFF_BYTES = 4096


def looks_like_sequences_json(path: Path) -> bool:
    """Whether a file's first bytes open `{"user": [` (a decision by content, not by name)."""
    try:
        with open(path, "rb") as handle:
            return bool(_SEQUENCES_START.match(handle.read(_SNIFF_BYTES)))
    except OSError:
        return False


def read_sequences_json(path: Path) -> Interactions:
    """One interaction per list entry, users in file order, each list's order kept as time.

    Item ids are int64 when every one is an integer, strings otherwise (all of one kind). A value
    that is not a non-empty list of ids is one error naming the file and the user's key."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty object {{user: [item, ...]}}, got {type(data).__name__}")
    users: list[str] = []
    items: list[object] = []
    positions: list[int] = []
    kinds: set[type] = set()
    for user, sequence in data.items():
        if not isinstance(sequence, list) or not sequence:
            raise DataError(f"{path}: user {user!r}: expected a non-empty list of item ids, got {sequence!r:.80}")
        for item in sequence:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise DataError(f"{path}: user {user!r}: item {item!r:.80} is not an integer or a string id")
            kinds.add(type(item))
        users.extend([user] * len(sequence))
        items.extend(sequence)
        positions.extend(range(len(sequence)))
    if len(kinds) > 1:
        raise DataError(f"{path}: item ids mix integers and strings; use one kind")
    item_array = np.array(items, dtype=np.int64 if kinds == {int} else object)
    if item_array.dtype == object:
        item_array = item_array.astype(str)
    return Interactions(
        user=np.array(users, dtype=str),
        item=item_array,
        timestamp=np.array(positions, dtype=np.int64),
        source=str(path),
        properties={"has_timestamps": 0.0},
    )
