"""Preprocessing: k-core fixed point, dense remap, stable chronological order, split, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data import dataset as dataset_module
from data.dataset import prepare
from data.errors import DataError
from data.interactions import Interactions
from data.sequences import PreprocessOptions, build_sequences, k_core
from data.split import leave_one_out


def interactions(rows: list[tuple], source: str = "test") -> Interactions:
    user, item, ts = zip(*rows)
    return Interactions(np.array(user), np.array(item), np.array(ts, dtype=np.int64), source=source)


def k_core_by_definition(rows: list[tuple], user_core: int, item_core: int) -> set[int]:
    """Row indices surviving k-core: repeatedly delete rows of under-threshold users/items."""
    alive = set(range(len(rows)))
    while True:
        users, items = {}, {}
        for r in alive:
            users[rows[r][0]] = users.get(rows[r][0], 0) + 1
            items[rows[r][1]] = items.get(rows[r][1], 0) + 1
        drop = {r for r in alive if users[rows[r][0]] < user_core or items[rows[r][1]] < item_core}
        if not drop:
            return alive
        alive -= drop


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_core_matches_definition_and_is_a_fixed_point(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = [(int(rng.integers(30)), int(rng.zipf(1.6) % 40), i) for i in range(400)]
    mask = k_core(interactions(rows), 5, 4)
    assert set(np.flatnonzero(mask)) == k_core_by_definition(rows, 5, 4)
    kept = interactions(rows).take(mask)
    assert np.array_equal(k_core(kept, 5, 4), np.ones(len(kept), bool))


def test_k_core_that_empties_the_data_says_so() -> None:
    rows = [(1, 1, 0), (1, 2, 1), (2, 1, 2)]
    with pytest.raises(DataError, match=r"k-core filtering \(user_core=5, item_core=0\) removed every interaction"):
        build_sequences(interactions(rows), PreprocessOptions(user_core=5))


def test_remap_sort_and_ties_keep_source_order() -> None:
    rows = [("b", "x", 5), ("a", "z", 9), ("b", "y", 5), ("a", "x", 3), ("b", "z", 1), ("a", "y", 9)]
    seqs, report = build_sequences(interactions(rows), PreprocessOptions())
    assert seqs.user_ids.tolist() == ["a", "b"] and seqs.item_ids.tolist() == ["x", "y", "z"]
    original = lambda u: [seqs.item_ids[i - 1] for i in seqs.user_items(u)]
    assert original(0) == ["x", "z", "y"]  # 3, then the tie at 9 in file order (z before y)
    assert original(1) == ["z", "x", "y"]  # 1, then the tie at 5 in file order (x before y)
    assert seqs.user_timestamps(1).tolist() == [1, 5, 5]
    assert seqs.items.min() == 1 and seqs.items.max() == seqs.num_items == 3
    assert report["users"] == 2 and report["interactions"] == 6


def test_numeric_string_ids_become_integers_in_numeric_order() -> None:
    rows = [("10", "2", 1), ("10", "10", 2), ("9", "2", 3), ("9", "10", 4), ("9", "2", 5), ("10", "2", 6)]
    seqs, _ = build_sequences(interactions(rows), PreprocessOptions())
    assert seqs.user_ids.tolist() == [9, 10] and seqs.item_ids.tolist() == [2, 10]


def test_short_users_are_dropped_and_counted() -> None:
    rows = [(1, 1, 0), (1, 2, 1), (1, 3, 2), (2, 1, 3), (2, 2, 4)]
    seqs, report = build_sequences(interactions(rows), PreprocessOptions())
    assert seqs.num_users == 1 and report["users_below_min_interactions"] == 1


def test_leave_one_out_modes() -> None:
    rows = [(1, i, t) for t, i in enumerate([5, 6, 7, 8])] + [(2, i, t) for t, i in enumerate([1, 2, 3])]
    seqs, _ = build_sequences(interactions(rows), PreprocessOptions())
    dense = lambda original: [int(np.searchsorted(seqs.item_ids, o)) + 1 for o in original]
    ref = leave_one_out(seqs, "reference")
    assert ref.train.user_items(0).tolist() == dense([5, 6, 7])
    assert ref.test.targets.tolist() == dense([8, 3]) and ref.valid.targets.tolist() == dense([7, 2])
    assert ref.test.history.user_items(1).tolist() == dense([1, 2])
    assert ref.valid.history.user_items(0).tolist() == dense([5, 6])
    assert ref.test.target_timestamps.tolist() == [3, 2]
    hold = leave_one_out(seqs, "holdout")
    assert hold.train.user_items(0).tolist() == dense([5, 6]) and hold.train.user_items(1).tolist() == dense([1])
    with pytest.raises(DataError, match="unknown split mode"):
        leave_one_out(seqs, "random")


def test_cache_round_trip_skips_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path / "cache"))
    data_file = tmp_path / "u.data"
    data_file.write_text("".join(f"{u}\t{i}\t3\t{100 + i}\n" for u in (1, 2) for i in (4, 9, 7)))
    first = prepare(str(data_file), format="movielens")
    monkeypatch.setattr(dataset_module.sources, "load_interactions", lambda *a: pytest.fail("re-parsed"))
    second = prepare(str(data_file), format="movielens")
    for name in ("offsets", "items", "timestamps", "ratings", "user_ids", "item_ids"):
        assert np.array_equal(getattr(first.sequences, name), getattr(second.sequences, name)), name
    assert second.report == first.report
    other_key = dataset_module.cache_key(str(data_file), "movielens", None, PreprocessOptions(user_core=2))
    assert other_key != dataset_module.cache_key(str(data_file), "movielens", None, PreprocessOptions())


def test_damaged_cache_entry_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALING_LAB_CACHE", str(tmp_path / "cache"))
    data_file = tmp_path / "u.data"
    data_file.write_text("".join(f"{u}\t{i}\t3\t{100 + i}\n" for u in (1, 2) for i in (4, 9, 7)))
    first = prepare(str(data_file), format="movielens")
    (entry,) = (tmp_path / "cache" / "sequences").iterdir()
    (entry / "sequences.npz").write_bytes(b"truncated")
    again = prepare(str(data_file), format="movielens")
    assert np.array_equal(again.sequences.items, first.sequences.items)
    assert (entry / "sequences.npz").stat().st_size > len(b"truncated")  # rewritten
