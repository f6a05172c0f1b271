"""grain batches: packing correctness, determinism, process sharding, iterator state, eval rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data.errors import DataError
from data.interactions import Interactions
from data.packing import best_fit_rows
from data.pipeline import TOKEN_FIELDS, PipelineConfig, epoch_plan, eval_dataset, history_row, history_rows, train_dataset
from data.sequences import PreprocessOptions, Sequences, build_sequences
from data.split import leave_one_out

FIELDS = tuple(TOKEN_FIELDS)


@pytest.fixture(scope="module")
def split():
    """40 users with 3..30 interactions; timestamps encode (user, position) so tokens are traceable."""
    rng = np.random.default_rng(7)
    user, item, ts = [], [], []
    for u in range(40):
        n = int(rng.integers(3, 31))
        user += [u] * n
        item += rng.integers(1, 60, n).tolist()
        ts += [u * 1000 + k for k in range(n)]
    seqs, _ = build_sequences(
        Interactions(np.array(user), np.array(item), np.array(ts, dtype=np.int64), source="toy"), PreprocessOptions()
    )
    return leave_one_out(seqs, "reference")


def take(config: PipelineConfig, train: Sequences, batches: int, process_index: int = 0, process_count: int = 1):
    iterator = iter(train_dataset(train, config, process_index, process_count))
    return [next(iterator) for _ in range(batches)]


def segments_of(batch: dict) -> list[dict]:
    """Every (row, segment) of a batch as a dict of its token arrays."""
    found = []
    for r in range(batch["items"].shape[0]):
        for s in np.unique(batch["segment_ids"][r]):
            if s == 0:
                continue
            where = batch["segment_ids"][r] == s
            found.append({name: batch[name][r][where] for name in FIELDS} | {"where": np.flatnonzero(where)})
    return found


@pytest.mark.parametrize("packed, window", [(False, "recent"), (True, "recent"), (True, "random")])
def test_every_token_is_the_right_one(split, packed: bool, window: str) -> None:
    train = split.train
    config = PipelineConfig(batch_size=4, row_len=12, packed=packed, window=window, seed=3)
    batches = take(config, train, 6)
    for batch in batches:
        pad = batch["segment_ids"] == 0
        assert np.all(batch["items"][pad] == 0) and np.all(batch["targets"][pad] == 0) and np.all(batch["users"][pad] == -1)
        for seg in segments_of(batch):
            user = int(seg["users"][0])
            assert np.all(seg["users"] == user), "one segment, one user"
            assert np.array_equal(seg["where"], seg["where"][0] + np.arange(len(seg["where"]))), "contiguous"
            assert np.array_equal(seg["positions"], np.arange(len(seg["items"])))
            # Timestamps encode (user, index in the user's sequence): the segment is a window of it.
            index = seg["timestamps"] - user * 1000
            start, end = int(index[0]), int(index[-1]) + 1
            assert np.array_equal(index, np.arange(start, end))
            assert np.array_equal(seg["items"], train.user_items(user)[start:end])
            assert np.array_equal(seg["targets"][:-1], seg["items"][1:]) and seg["targets"][-1] == 0
            assert np.array_equal(seg["next_timestamps"][:-1], seg["timestamps"][1:])
            if window == "recent":
                assert end == train.lengths[user] and end - start == min(12, end)


def test_packing_leaves_less_padding_and_covers_each_user_once_per_epoch(split) -> None:
    padded = epoch_plan(split.train, PipelineConfig(row_len=12), 0)
    packed = epoch_plan(split.train, PipelineConfig(row_len=12, packed=True), 0)
    assert packed.padding_fraction < padded.padding_fraction
    assert packed.real_tokens == padded.real_tokens
    assert sorted(packed.users.tolist()) == sorted(padded.users.tolist()) == list(range(40))
    assert packed.num_rows < padded.num_rows


def test_best_fit_never_overfills_and_opens_rows_only_when_needed() -> None:
    lengths = np.random.default_rng(0).integers(1, 11, 300)
    rows = best_fit_rows(lengths, 10)
    fill = np.bincount(rows, weights=lengths)
    assert fill.max() <= 10
    for k in range(len(lengths)):  # when row r opened, no earlier row had room for segment k
        if rows[k] == rows[:k].max(initial=-1) + 1:
            before = np.bincount(rows[:k], weights=lengths[:k], minlength=rows[k])
            assert np.all(before + lengths[k] > 10)


def test_same_seed_same_batches_other_seed_other_order(split) -> None:
    config = PipelineConfig(batch_size=4, row_len=12, packed=True, seed=11)
    first, again = take(config, split.train, 15), take(config, split.train, 15)
    other = take(dataclasses.replace(config, seed=12), split.train, 15)
    assert all(np.array_equal(a[f], b[f]) for a, b in zip(first, again) for f in FIELDS)
    assert not all(np.array_equal(a["users"], b["users"]) for a, b in zip(first, other))
    # Epochs reshuffle: the first rows of epoch 1 differ from those of epoch 0.
    assert not np.array_equal(epoch_plan(split.train, config, 0).users, epoch_plan(split.train, config, 1).users)


def test_processes_feed_slices_of_the_same_global_batches(split) -> None:
    config = PipelineConfig(batch_size=4, row_len=12, packed=True, num_epochs=2)
    one_process = list(train_dataset(split.train, config, 0, 1))
    shards = [list(train_dataset(split.train, config, p, 2)) for p in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(one_process)
    for whole, zero, one in zip(one_process, *shards):
        assert zero["items"].shape == (2, 12)
        for field in FIELDS:  # process 0 holds the first half of each global batch, process 1 the rest
            assert np.array_equal(np.concatenate([zero[field], one[field]]), whole[field])
    one_epoch = dataclasses.replace(config, num_epochs=1)
    rows = [{tuple(r) for b in train_dataset(split.train, one_epoch, p, 2) for r in b["users"]} for p in (0, 1)]
    assert rows[0] and rows[1] and not rows[0] & rows[1]  # within an epoch, disjoint


@pytest.mark.parametrize("process_count", [1, 2])
def test_whole_epochs_end_with_their_own_partial_batch(split, process_count: int) -> None:
    """40 users at batch 16: each epoch is batches of 16, 16 and 8 users + 8 empty rows, and
    holds every user once; the stream of full batches instead runs on into the next epoch."""
    config = PipelineConfig(batch_size=16, row_len=12, whole_epochs=True, seed=3, num_epochs=3)
    shards = [list(train_dataset(split.train, config, p, process_count)) for p in range(process_count)]
    batches = [{f: np.concatenate([shard[k][f] for shard in shards]) for f in FIELDS} for k in range(len(shards[0]))]
    assert len(batches) == 3 * 3
    for epoch in range(3):
        users = [b["users"][:, 0] for b in batches[3 * epoch:3 * epoch + 3]]
        assert [int(np.sum(u >= 0)) for u in users] == [16, 16, 8]
        assert np.all(users[2][8:] == -1) and np.all(batches[3 * epoch + 2]["targets"][8:] == 0)
        assert sorted(np.concatenate(users)[np.concatenate(users) >= 0].tolist()) == list(range(40))
    streamed = take(dataclasses.replace(config, whole_epochs=False, num_epochs=None), split.train, 3)
    assert int(np.sum(streamed[2]["users"][:, 0] >= 0)) == 16


@pytest.mark.parametrize("whole_epochs", [False, True])
def test_iterator_state_round_trip_resumes_exactly(split, whole_epochs: bool) -> None:
    config = PipelineConfig(batch_size=4, row_len=12, packed=True, seed=5, whole_epochs=whole_epochs)
    iterator = iter(train_dataset(split.train, config))
    for _ in range(9):  # crosses an epoch boundary (about 8 batches per epoch)
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(5)]
    fresh = iter(train_dataset(split.train, config))
    fresh.set_state(state)
    resumed = [next(fresh) for _ in range(5)]
    assert all(np.array_equal(a[f], b[f]) for a, b in zip(expected, resumed) for f in FIELDS)
    assert state["epoch"] == 1


@pytest.mark.parametrize("resume_processes", [2, 1])
def test_the_state_process_0_saves_resumes_every_process_of_any_job(split, resume_processes: int) -> None:
    """A multi-process checkpoint holds process 0's iterator state only (orbax writes its JSON
    from the primary host): restored in every process, each continues its own slice, and the
    global batches go on as one stream, with the same or another number of processes."""
    config = PipelineConfig(batch_size=4, row_len=12, packed=True, seed=5)
    iterators = [iter(train_dataset(split.train, config, p, 2)) for p in range(2)]
    for _ in range(9):  # crosses an epoch boundary
        for iterator in iterators:
            next(iterator)
    state = iterators[0].get_state()
    assert iterators[1].get_state() == state
    expected = [np.concatenate([next(iterator)["items"] for iterator in iterators]) for _ in range(5)]
    fresh = [iter(train_dataset(split.train, config, p, resume_processes)) for p in range(resume_processes)]
    for iterator in fresh:
        iterator.set_state(state)
    resumed = [np.concatenate([next(iterator)["items"] for iterator in fresh]) for _ in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(expected, resumed))


def test_eval_rows_hold_truncated_history_and_target(split) -> None:
    batches = list(eval_dataset(split.test, row_len=12, batch_size=16))
    assert len(batches) == 3 and all(b["items"].shape == (16, 12) for b in batches)
    valid = np.concatenate([b["eval_valid"] for b in batches])
    assert valid.sum() == 40 and not valid[40:].any()
    for batch in batches:
        for r in np.flatnonzero(batch["eval_valid"]):
            user, last = int(batch["eval_user"][r]), int(batch["eval_position"][r])
            history = split.test.history.user_items(user)
            assert np.array_equal(batch["items"][r][: last + 1], history[-12:])
            assert batch["targets"][r][last] == batch["eval_target"][r] == split.test.targets[user]
            assert batch["next_timestamps"][r][last] == split.test.target_timestamps[user]
    shorter = eval_dataset(split.test, row_len=12, batch_size=16, history_len=5)[0]
    assert np.all(shorter["eval_position"] <= 4) and np.all(shorter["segment_ids"][:, 5:] == 0)
    shards = [list(eval_dataset(split.test, 12, 16, p, 2)) for p in (0, 1)]
    users = [u for shard in shards for b in shard for u in b["eval_user"][b["eval_valid"]]]
    assert sorted(users) == list(range(40)) and len(shards[0]) == len(shards[1])


def _reference_row(history: Sequences, user: int, row_len: int, history_len, target: int, target_time) -> dict:
    """One history row written token by token (the pipeline builds whole batches with array indexing)."""
    row = {name: np.zeros(row_len, dtype) for name, dtype in TOKEN_FIELDS.items()}
    row["users"][:] = -1
    items, times = history.user_items(user), history.user_timestamps(user)
    kept = min(len(items), history_len or row_len, row_len)
    items, times = items[len(items) - kept:], times[len(times) - kept:]
    for k in range(kept):
        final = k == kept - 1
        row["items"][k], row["timestamps"][k], row["positions"][k] = items[k], times[k], k
        row["next_timestamps"][k] = (times[k] if target_time is None else target_time) if final else times[k + 1]
        row["targets"][k] = target if final else items[k + 1]
        row["segment_ids"][k], row["users"][k] = 1, user
    return row | {"eval_target": np.int32(target), "eval_position": np.int32(max(kept - 1, 0)),
                  "eval_user": np.int32(user), "eval_valid": np.bool_(kept > 0)}


@pytest.mark.parametrize("history_len", [None, 5, 40])
def test_history_rows_equal_rows_written_token_by_token(split, history_len) -> None:
    history = split.test.history.select_users(np.array([3, 0, 7]))
    history = dataclasses.replace(history, offsets=np.concatenate([history.offsets, history.offsets[-1:]]),
                                  user_ids=np.append(history.user_ids, -5))  # user 3 has no items
    users, targets, times = np.array([2, 3, 0, 1, 2]), np.array([9, 8, 7, 6, 5]), np.array([50, 60, 70, 80, 90])
    for target_times in (times, None):
        batch = history_rows(history, users, 12, history_len, targets, target_times, rows=7)
        expected = [_reference_row(history, int(u), 12, history_len, int(t), None if target_times is None else int(tt))
                    for u, t, tt in zip(users, targets, times)]
        filler = _reference_row(history, 3, 12, None, 0, None) | {"eval_user": np.int32(-1)}
        for r, row in enumerate(expected + [filler] * 2):
            for name, value in row.items():
                assert batch[name][r].dtype == np.asarray(value).dtype, name
                np.testing.assert_array_equal(batch[name][r], value, err_msg=f"row {r} {name}")
        single = history_row(history, int(users[0]), 12, history_len, int(targets[0]),
                             None if target_times is None else int(times[0]))
        assert all(np.array_equal(single[name], expected[0][name]) for name in expected[0])
    assert not batch["eval_valid"][1] and batch["eval_user"][1] == 3  # a user without items: its row, not valid


def test_bad_configs_fail_clearly(split) -> None:
    with pytest.raises(DataError, match="does not split over 3 processes"):
        train_dataset(split.train, PipelineConfig(batch_size=4), 0, 3)
    with pytest.raises(DataError, match="row_len=1"):
        train_dataset(split.train, PipelineConfig(row_len=1))
