"""Leave-one-out split: last interaction = test target, second to last = validation target."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from data.errors import DataError
from data.sequences import Sequences

SplitMode = Literal["reference", "holdout"]
SPLIT_MODES = ("reference", "holdout")


@dataclasses.dataclass(frozen=True, eq=False)
class EvalTargets:
    """One target per user: `history` holds what the user did before it (untruncated)."""

    history: Sequences
    targets: np.ndarray  # int32 (users,), dense item ids
    target_timestamps: np.ndarray  # int64 (users,)

    def __len__(self) -> int:
        return len(self.targets)


@dataclasses.dataclass(frozen=True, eq=False)
class LeaveOneOut:
    """train: the sequences a model trains on (which targets they exclude depends on mode).

    reference: train on everything but the test target, as the HSTU reference implementation
    does (the validation target is then seen in training); holdout: also exclude the validation
    target, so validation metrics can select models.
    """

    mode: SplitMode
    train: Sequences
    valid: EvalTargets
    test: EvalTargets


def leave_one_out(sequences: Sequences, mode: SplitMode = "reference") -> LeaveOneOut:
    """Split every user's chronological sequence; every user needs at least 3 interactions."""
    if mode not in SPLIT_MODES:
        raise DataError(f"unknown split mode {mode!r}; known: {', '.join(SPLIT_MODES)}")
    if sequences.num_users and sequences.lengths.min() < 3:
        raise DataError("leave-one-out needs at least 3 interactions per user (train, valid, test)")
    without_test = sequences.drop_last(1)
    without_valid = without_test.drop_last(1)
    test_items, test_times = sequences.last(1)
    valid_items, valid_times = sequences.last(2)
    return LeaveOneOut(
        mode=mode,
        train=without_test if mode == "reference" else without_valid,
        valid=EvalTargets(without_valid, valid_items, valid_times),
        test=EvalTargets(without_test, test_items, test_times),
    )


EVAL_SUBSET_SEED = 0  # one subset per dataset, whatever the trial's seed


def eval_subset(split: LeaveOneOut, users: int) -> LeaveOneOut:
    """`split` with its validation and test targets restricted to a fixed random subset of `users`
    users (chosen by EVAL_SUBSET_SEED, kept in user order); the training sequences are unchanged.
    users = 0, or at least the number of users, keeps every user."""
    total = len(split.valid)
    if users <= 0 or users >= total:
        return split
    chosen = np.sort(np.random.default_rng(EVAL_SUBSET_SEED).choice(total, users, replace=False))
    return dataclasses.replace(split, valid=_targets_of(split.valid, chosen), test=_targets_of(split.test, chosen))


def _targets_of(targets: EvalTargets, users: np.ndarray) -> EvalTargets:
    return EvalTargets(targets.history.select_users(users), targets.targets[users], targets.target_timestamps[users])
