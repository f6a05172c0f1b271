"""grain pipelines from sequences to host batches: training rows (padded or packed) and eval rows.

Every batch is a dict of numpy arrays with rows of `row_len` tokens, left-aligned (padding at
the right), holding the fields of config/batch.py (TOKEN_FIELDS per token, ROW_FIELDS per eval row).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import grain
import numpy as np

from config.batch import ROW_FIELDS, TOKEN_FIELDS
from data.errors import DataError
from data.packing import RowPlan, plan_rows
from data.sequences import Sequences
from data.split import EvalTargets

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """batch_size: rows per GLOBAL batch (split evenly over processes); row_len: tokens per row
    (a trial's data.max_len history items + 1).

    window: "recent" trains on each user's most recent row_len items (the reference protocol);
    "random" draws each user's window end anew every epoch. packed: several users per row.
    whole_epochs: every epoch ends with its own last, partial batch, topped up with empty rows
    (the reference's DataLoader: 943 users at batch 128 make 7 full batches and one of 47 users);
    False streams rows across epoch ends, so every batch is full. num_epochs: None repeats forever.
    """

    batch_size: int = 128
    row_len: int = 201
    packed: bool = False
    window: Literal["recent", "random"] = "recent"
    shuffle: bool = True
    whole_epochs: bool = False
    seed: int = 0
    num_epochs: int | None = None


def _check(config: PipelineConfig, process_count: int) -> None:
    if config.row_len < 2:
        raise DataError(f"row_len={config.row_len}: a row needs at least 2 tokens to hold a target")
    if config.window not in ("recent", "random"):
        raise DataError(f"window={config.window!r}: known windows are recent, random")
    if config.batch_size < 1 or config.batch_size % process_count:
        raise DataError(f"batch_size={config.batch_size} does not split over {process_count} processes")


def epoch_plan(train: Sequences, config: PipelineConfig, epoch: int) -> RowPlan:
    """The rows of one epoch: user order and windows drawn from (seed, epoch)."""
    lengths = train.lengths
    users = np.flatnonzero(lengths >= 2)  # a single item has no next item to predict
    if config.shuffle:
        users = np.random.default_rng([config.seed, epoch, 0]).permutation(users)
    ends = lengths[users]
    if config.window == "random":
        ends = np.random.default_rng([config.seed, epoch, 1]).integers(2, ends + 1)
    starts = np.maximum(ends - config.row_len, 0)
    return plan_rows(users, starts, ends, config.row_len, config.packed)


def _empty_row(row_len: int) -> Batch:
    row = {name: np.zeros(row_len, dtype) for name, dtype in TOKEN_FIELDS.items()}
    row["users"][:] = -1
    return row


def _fill_segment(row: Batch, at: int, sequences: Sequences, user: int, start: int, end: int,
                  segment: int, target: int = 0, target_timestamp: int | None = None) -> None:
    """Write user's items [start, end) at row position `at`; the last token's target is `target`."""
    base = sequences.offsets[user]
    items = sequences.items[base + start : base + end]
    times = sequences.timestamps[base + start : base + end]
    span = slice(at, at + len(items))
    row["items"][span] = items
    row["timestamps"][span] = times
    row["next_timestamps"][span] = np.append(times[1:], times[-1] if target_timestamp is None else target_timestamp)
    row["targets"][span] = np.append(items[1:], target)
    row["segment_ids"][span] = segment
    row["positions"][span] = np.arange(len(items))
    row["users"][span] = user


def plan_row(plan: RowPlan, train: Sequences, row_index: int) -> Batch:
    """Materialise row `row_index` of a plan."""
    row = _empty_row(plan.capacity)
    at = 0
    for segment, k in enumerate(range(plan.row_offsets[row_index], plan.row_offsets[row_index + 1]), start=1):
        start, end = int(plan.starts[k]), int(plan.ends[k])
        _fill_segment(row, at, train, int(plan.users[k]), start, end, segment)
        at += end - start
    return row


class TrainRows(grain.IterDataset):
    """The training rows of one process, in global batches of config.batch_size rows.

    The global stream concatenates epochs; each epoch has its own shuffle, windows and packing.
    Global batch k is stream rows [k B, (k + 1) B); process p feeds its contiguous slice
    [k B + p b, k B + (p + 1) b) with b = B / P. So a global batch holds the same rows in the same
    order whatever the number of processes, and every process yields the same number of rows.
    """

    def __init__(self, train: Sequences, config: PipelineConfig, process_index: int, process_count: int):
        super().__init__()
        self.train, self.config = train, config
        self.process_index, self.process_count = process_index, process_count
        self.local_rows = config.batch_size // process_count

    @functools.lru_cache(maxsize=2)
    def plan(self, epoch: int) -> RowPlan:
        return epoch_plan(self.train, self.config, epoch)

    def stream_rows(self, epoch: int) -> int:
        """Rows epoch `epoch` contributes to the stream: its plan's rows, topped up with empty
        rows to whole batches when config.whole_epochs."""
        rows = self.plan(epoch).num_rows
        if self.config.whole_epochs:
            rows = -(-rows // self.config.batch_size) * self.config.batch_size
        return rows

    def __iter__(self) -> "_TrainRowIterator":
        return _TrainRowIterator(self)

    def __str__(self) -> str:
        return f"TrainRows(process {self.process_index}/{self.process_count}, {self.config})"


class _TrainRowIterator(grain.DatasetIterator):
    """State: (epoch, row) of the start of the current global batch in the stream, and how many
    rows of its local slice this process has yielded. The batch's start is the same in every
    process, so the state process 0 checkpoints restores every process (each adds its own slice
    offset), with any number of processes. A state without "global" (written before 2026-12-07)
    holds the process's own position: (epoch, row) of its next row."""

    def __init__(self, rows: TrainRows):
        super().__init__()
        self._rows = rows
        self._batch_epoch, self._batch_row = 0, 0  # the start of the current global batch
        self._epoch, self._row = self._forward(0, 0, rows.process_index * rows.local_rows)
        self._in_slice = 0

    def _forward(self, epoch: int, row: int, count: int) -> tuple[int, int]:
        """(epoch, row) of the stream row `count` rows after (epoch, row), across epoch ends."""
        config = self._rows.config
        row += count
        while config.num_epochs is None or epoch < config.num_epochs:
            num_rows = self._rows.stream_rows(epoch)
            if num_rows == 0:
                raise DataError("no user has 2 training interactions: nothing to train on")
            if row < num_rows:
                break
            row -= num_rows
            epoch += 1
        return epoch, row

    def __next__(self) -> Batch:
        rows = self._rows
        if rows.config.num_epochs is not None and self._epoch >= rows.config.num_epochs:
            raise StopIteration
        plan = rows.plan(self._epoch)
        row = plan_row(plan, rows.train, self._row) if self._row < plan.num_rows else _empty_row(plan.capacity)
        in_slice = self._in_slice + 1
        if in_slice == rows.local_rows:  # the slice is done: on to this process's slice of the next batch
            self._batch_epoch, self._batch_row = self._forward(self._batch_epoch, self._batch_row,
                                                               rows.config.batch_size)
            self._epoch, self._row = self._forward(self._batch_epoch, self._batch_row,
                                                   rows.process_index * rows.local_rows)
            self._in_slice = 0
        else:
            self._epoch, self._row = self._forward(self._epoch, self._row, 1)
            self._in_slice = in_slice
        return row

    def get_state(self) -> dict[str, Any]:
        return {"epoch": self._batch_epoch, "row": self._batch_row, "in_slice": self._in_slice, "global": True}

    def set_state(self, state: dict[str, Any]) -> None:
        rows = self._rows
        epoch, row, in_slice = int(state["epoch"]), int(state["row"]), int(state["in_slice"])
        if not state.get("global"):  # the process's own next row, which equals the batch's start in process 0
            if rows.process_index != 0 or row < in_slice:
                raise DataError("a data-iterator state written before 2026-12-07 restores one process at a "
                                "batch boundary only; resume that checkpoint with one process")
            row -= in_slice
        self._batch_epoch, self._batch_row = self._forward(epoch, row, 0)
        self._epoch, self._row = self._forward(self._batch_epoch, self._batch_row,
                                               rows.process_index * rows.local_rows + in_slice)
        self._in_slice = in_slice


def _this_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise JAX's view of the multi-host job."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index} is outside 0..{process_count - 1}")
    return process_index, process_count


def train_dataset(
    train: Sequences, config: PipelineConfig, process_index: int | None = None, process_count: int | None = None
) -> grain.IterDataset:
    """This process's training batches: batch_size / process_count rows each, deterministic.

    process_index / process_count default to jax.process_index() / jax.process_count().
    """
    process_index, process_count = _this_process(process_index, process_count)
    _check(config, process_count)
    rows = TrainRows(train, config, process_index, process_count)
    return rows.batch(rows.local_rows, drop_remainder=True)


def eval_row(targets: EvalTargets, user: int, row_len: int, history_len: int | None = None) -> Batch:
    """A row of row_len tokens holding the user's most recent history_len (default row_len)
    history items; the last history token's target is the eval target."""
    return _row(eval_rows(targets, np.array([user]), row_len, history_len, rows=1))


def history_row(history: Sequences, user: int, row_len: int, history_len: int | None = None, target: int = 0,
                target_timestamp: int | None = None) -> Batch:
    """eval_row of a history whose target is unknown (target 0; the last token's next timestamp is
    its own, as in training): what a serving request is. A user without items gives a row with
    eval_valid False."""
    return _row(history_rows(history, np.array([user]), row_len, history_len, np.array([target]),
                             None if target_timestamp is None else np.array([target_timestamp])))


def _row(batch: Batch) -> Batch:
    return {key: value[0] for key, value in batch.items()}


def eval_rows(targets: EvalTargets, users: np.ndarray, row_len: int, history_len: int | None = None,
              rows: int | None = None) -> Batch:
    """eval_row of each of `users`, stacked, then filler rows (eval_valid False, eval_user -1) up
    to `rows` rows."""
    return history_rows(targets.history, users, row_len, history_len, targets.targets[users],
                        targets.target_timestamps[users], rows)


def history_rows(history: Sequences, users: np.ndarray, row_len: int, history_len: int | None = None,
                 targets: np.ndarray | None = None, target_timestamps: np.ndarray | None = None,
                 rows: int | None = None) -> Batch:
    """history_row of each of `users` (with its target and target timestamp, if given), stacked,
    then filler rows up to `rows` rows: built for the whole batch at once."""
    users = np.asarray(users, np.int64)
    count, rows = len(users), len(users) if rows is None else rows
    batch = {name: np.zeros((rows, row_len), dtype) for name, dtype in TOKEN_FIELDS.items()}
    batch["users"][:] = -1
    first, lengths = history.offsets[users], history.offsets[users + 1] - history.offsets[users]
    kept = np.minimum(lengths, min(history_len or row_len, row_len))  # the most recent items that fit
    column = np.arange(row_len)[None, :]
    placed = column < kept[:, None]
    inner = column < kept[:, None] - 1  # tokens whose next item is in the row
    last = placed & ~inner
    index = first[:, None] + (lengths - kept)[:, None] + column  # into history's flat arrays, where placed
    own = {name: np.where(placed, values[np.where(placed, index, 0)], 0)
           for name, values in (("items", history.items), ("timestamps", history.timestamps))}
    after = {name: np.where(inner, values[np.where(inner, index + 1, 0)], 0)
             for name, values in (("items", history.items), ("timestamps", history.timestamps))}
    target = np.zeros(count, np.int64) if targets is None else np.asarray(targets)
    target_time = own["timestamps"] if target_timestamps is None else np.asarray(target_timestamps)[:, None]
    tokens = {
        "items": own["items"],
        "timestamps": own["timestamps"],
        "next_timestamps": np.where(last, target_time, after["timestamps"]),
        "targets": np.where(last, target[:, None], after["items"]),
        "segment_ids": placed,
        "positions": np.where(placed, column, 0),
        "users": np.where(placed, users[:, None], -1),
    }
    for name, values in tokens.items():
        batch[name][:count] = values
    row_fields = {"eval_target": target, "eval_position": np.maximum(kept - 1, 0), "eval_user": users,
                  "eval_valid": lengths > 0}
    for name, dtype in ROW_FIELDS.items():
        batch[name] = np.full(rows, -1 if name == "eval_user" else 0, dtype)
        batch[name][:count] = row_fields[name]
    return batch


def eval_dataset(
    targets: EvalTargets,
    row_len: int,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    history_len: int | None = None,
) -> grain.MapDataset:
    """This process's eval batches over all users with a target, in user order.

    Rows have row_len tokens and hold the most recent history_len (default row_len) items, so
    eval rows can share the training row length while the history follows the protocol.
    Users are dealt round-robin to processes; every process yields the same number of batches
    (filler rows with eval_valid False pad the tail), so collective eval steps line up.
    """
    process_index, process_count = _this_process(process_index, process_count)
    if batch_size < 1 or batch_size % process_count:
        raise DataError(f"eval batch_size={batch_size} does not split over {process_count} processes")
    local_batch = batch_size // process_count
    users = np.arange(process_index, len(targets), process_count)
    num_batches = -(-len(targets) // batch_size)

    def make_batch(index: int) -> Batch:
        return eval_rows(targets, users[index * local_batch : (index + 1) * local_batch], row_len, history_len,
                         local_batch)

    return grain.MapDataset.range(num_batches).map(make_batch)


def padding_fraction(train: Sequences, config: PipelineConfig, epoch: int = 0) -> float:
    """Fraction of row tokens that are padding in one epoch of the configured layout."""
    return epoch_plan(train, config, epoch).padding_fraction


def segment_lengths(batch: Batch) -> np.ndarray:
    """Lengths of every segment (user window) in a batch of rows."""
    segments = batch["segment_ids"]
    row_offset = (np.arange(segments.shape[0]) * (segments.shape[1] + 1))[:, None]
    ids = np.where(segments > 0, segments + row_offset, 0).ravel()
    counts = np.bincount(ids)
    return counts[1:][counts[1:] > 0]
