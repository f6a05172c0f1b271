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
