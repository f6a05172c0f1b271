"""MovieLens and RecBole readers on tiny fixture files in each layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.errors import DataError
from data.readers.movielens import read_movielens
from data.readers.recbole import read_recbole
from data.sources import detect_format, read_path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_movielens_100k(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250949\n")
    flags = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)
    write(tmp_path / "u.item", f"242|Kolya (1996)|24-Jan-1997||http://x|{flags}\n"
          f"302|L.A. Confidential (1997)|01-Jan-1997||http://y|{flags}\n", encoding="latin-1")
    got = read_movielens(tmp_path)
    assert got.user.tolist() == [196, 186, 196]
    assert got.item.tolist() == [242, 302, 302]
    assert got.timestamp.dtype == np.int64 and got.timestamp.tolist() == [881250949, 891717742, 881250949]
    assert got.rating.tolist() == [3.0, 3.0, 5.0]
    meta = got.item_metadata
    assert meta["title"].tolist() == ["Kolya (1996)", "L.A. Confidential (1997)"]
    assert meta["genres"].tolist() == ["Comedy", "Comedy"]
    assert meta["year"].tolist() == [1997, 1997]
    assert detect_format(tmp_path) == "movielens"


def test_movielens_1m_double_colon_latin1(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    write(tmp_path / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
          "661::Amélie (2001)::Comedy|Romance\n", encoding="latin-1")
    got = read_movielens(tmp_path / "ratings.dat")
    assert got.user.tolist() == [1, 1, 2] and got.item.tolist() == [1193, 661, 1193]
    assert got.timestamp.tolist() == [978300760, 978302109, 978298413]
    assert got.item_metadata["title"].tolist()[1] == "Amélie (2001)"
    assert got.item_metadata["year"].tolist() == [1975, 2001]


def test_movielens_20m_csv(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n")
    write(tmp_path / "movies.csv", 'movieId,title,genres\n2,Jumanji (1995),Adventure\n29,"City of Lost Children, The (1995)",Drama\n')
    got = read_movielens(tmp_path)
    assert got.item.tolist() == [2, 29] and got.rating.tolist() == [3.5, 3.5]
    assert got.item_metadata["title"].tolist()[1] == "City of Lost Children, The (1995)"


def test_recbole_atomic_files(tmp_path: Path) -> None:
    write(tmp_path / "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          "u1\ti9\t4\t100.7\nu2\ti3\t1\t50\n")
    write(tmp_path / "toy.item", "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
          "i9\tSome Film\tDrama Comedy\ni3\tOther\tWar\n")
    got = read_recbole(tmp_path)
    assert got.user.tolist() == ["u1", "u2"] and got.item.tolist() == ["i9", "i3"]
    assert got.timestamp.tolist() == [100, 50]
    assert got.item_metadata["movie_title"].tolist() == ["Some Film", "Other"]
    assert detect_format(tmp_path) == "recbole"


@pytest.mark.parametrize(
    "line, problem",
    [
        ("7\t8\t3\n", "expected 4 fields, got 3"),
        ("7\t8\t3\t4\t5\n", "expected 4 fields, got 5"),
        ("7\tabc\t3\t881250949\n", "field item is not an integer"),
        ("7\t8\t3\t8812.5\n", "field timestamp is not an integer"),
    ],
)
def test_malformed_line_names_file_line_and_text(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path / "u.data", "1\t2\t3\t881250949\n" + line)
    with pytest.raises(DataError) as caught:
        read_movielens(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: {problem}")
    assert repr(line.rstrip("\n"))[1:-1] in message


def test_recbole_header_without_types(tmp_path: Path) -> None:
    write(tmp_path / "x.inter", "user_id\titem_id\ttimestamp\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"x.inter:1: header field 'user_id' needs a type"):
        read_recbole(tmp_path / "x.inter")


def test_unknown_format_and_undetectable_path(tmp_path: Path) -> None:
    path = write(tmp_path / "mystery.bin", "x")
    with pytest.raises(DataError, match="cannot tell the format; pass --format"):
        detect_format(path)
    with pytest.raises(DataError, match="unknown format 'xml'"):
        read_path(path, "xml", None)
