"""MovieLens readers: 100K (u.data, u.item), 1M/10M (ratings.dat, movies.dat), 20M+ (ratings.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataError
from data.interactions import Interactions
from data.readers.delimited import read_delimited

_GENRES_100K = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
_RATING_KINDS = {"user": "int", "item": "int", "rating": "float", "timestamp": "int"}


def find_movielens_layout(path: Path) -> tuple[str, Path]:
    """Which MovieLens release `path` (a folder or its ratings file) holds, and its ratings file."""
    path = Path(path)
    candidates = {"u.data": "100k", "ratings.dat": "1m-10m", "ratings.csv": "20m+"}
    if path.is_file():
        if path.name in candidates:
            return candidates[path.name], path
        raise DataError(f"{path}: not a MovieLens ratings file (expected one of {', '.join(candidates)})")
    for name, layout in candidates.items():
        if (path / name).is_file():
            return layout, path / name
    raise DataError(f"{path}: no MovieLens ratings file here (looked for {', '.join(candidates)})")


def read_movielens(path: Path) -> Interactions:
    """Interactions plus movie metadata (title, genres, year) from a MovieLens folder or file."""
    layout, ratings_path = find_movielens_layout(path)
    if layout == "100k":
        frame = read_delimited(ratings_path, sep="\t", names=list(_RATING_KINDS), kinds=_RATING_KINDS)
        metadata = _movies_100k(ratings_path.parent / "u.item")
    elif layout == "1m-10m":
        frame = read_delimited(
            ratings_path, sep="::", names=list(_RATING_KINDS), kinds=_RATING_KINDS, encoding="latin-1"
        )
        metadata = _movies_dat(ratings_path.parent / "movies.dat")
    else:
        frame = read_delimited(
            ratings_path, sep=",", names=list(_RATING_KINDS), kinds=_RATING_KINDS, header_lines=1
        )
        metadata = _movies_csv(ratings_path.parent / "movies.csv")
    return Interactions(
        user=frame["user"].to_numpy(),
        item=frame["item"].to_numpy(),
        timestamp=frame["timestamp"].to_numpy(),
        rating=frame["rating"].to_numpy(np.float32),
        item_metadata=metadata,
        source=str(ratings_path),
    )


def _year_from_title(titles: pd.Series) -> pd.Series:
    return pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce").astype("Int64")


def _movies_100k(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    names = ["item", "title", "release_date", "video_release_date", "url"] + _GENRES_100K
    kinds = {"item": "int", "title": "str", "release_date": "str"} | {g: "int" for g in _GENRES_100K}
    frame = read_delimited(path, sep="|", names=names, kinds=kinds, encoding="latin-1")
    flags = frame[_GENRES_100K].to_numpy(bool)
    genres = ["|".join(g for g, on in zip(_GENRES_100K, row) if on) for row in flags]
    year = pd.to_datetime(frame["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    return pd.DataFrame(
        {"item": frame["item"], "title": frame["title"], "genres": genres, "year": year.astype("Int64")}
    )


def _movies_dat(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    kinds = {"item": "int", "title": "str", "genres": "str"}
    frame = read_delimited(path, sep="::", names=list(kinds), kinds=kinds, encoding="latin-1")
    return frame.assign(year=_year_from_title(frame["title"]))


def _movies_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"movieId": "int64", "title": str, "genres": str})
    except (ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{path}: cannot parse: {error}") from None
    frame = frame.rename(columns={"movieId": "item"})
    return frame.assign(year=_year_from_title(frame["title"]))
