"""The synthetic behaviour process: its reported entropy is the true log-loss, and its knobs act."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data import synthetic
from data.dataset import prepare
from data.errors import DataError

SMALL = synthetic.parse_spec("synthetic:users=1500,items=400,seed=3,mean_events=30")


def test_reported_entropy_matches_the_true_processs_log_loss() -> None:
    generated = synthetic.generate(SMALL)
    log_probs = synthetic.event_log_probs(SMALL)
    assert len(log_probs) == len(generated)
    entropy = generated.properties["entropy_per_event"]
    entropy_se = generated.properties["entropy_per_event_stderr"]
    loss, loss_se = -log_probs.mean(), log_probs.std() / np.sqrt(len(log_probs))
    assert abs(loss - entropy) < 4 * np.hypot(entropy_se, loss_se)
    assert 0 < entropy < np.log(SMALL.items)  # better than uniform guessing


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, again = synthetic.generate(SMALL), synthetic.generate(SMALL)
    for name in ("user", "item", "timestamp"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    other = synthetic.generate(dataclasses.replace(SMALL, seed=4))
    assert not np.array_equal(first.item[:1000], other.item[:1000])


def test_memory_makes_the_next_item_predictable() -> None:
    loose = synthetic.generate(dataclasses.replace(SMALL, memory=0.0)).properties["entropy_per_event"]
    tight = synthetic.generate(dataclasses.replace(SMALL, memory=0.9)).properties["entropy_per_event"]
    assert tight < loose - 0.5


def test_popularity_concentrates_with_the_zipf_exponent() -> None:
    def top_decile_share(zipf: float) -> float:
        counts = np.sort(np.bincount(synthetic.generate(dataclasses.replace(SMALL, zipf=zipf, memory=0.0)).item))[::-1]
        return counts[: len(counts) // 10].sum() / counts.sum()
    flat, steep = top_decile_share(0.0), top_decile_share(1.5)
    assert flat < 0.25 and steep > 0.6


def test_sequences_and_timestamps() -> None:
    generated = synthetic.generate(SMALL)
    assert generated.timestamp.dtype == np.int64
    lengths = np.bincount(generated.user)[1:]
    assert lengths.min() >= SMALL.min_events and len(lengths) == SMALL.users
    same_user = generated.user[1:] == generated.user[:-1]
    gaps = np.diff(generated.timestamp)[same_user]
    assert np.all(gaps >= 0) and np.median(gaps) < 3600 < np.percentile(gaps, 95)  # sessions and breaks
    assert generated.item.min() >= 1 and generated.item.max() <= SMALL.items


def test_spec_parsing_and_errors() -> None:
    spec = synthetic.parse_spec("synthetic:users=10,items=20,memory=0.25")
    assert (spec.users, spec.items, spec.memory, spec.seed) == (10, 20, 0.25, 0)
    assert synthetic.parse_spec(str(spec)) == spec  # the canonical name round-trips
    with pytest.raises(DataError, match="unknown key 'user'.*known: users, items, seed"):
        synthetic.parse_spec("synthetic:user=10")
    with pytest.raises(DataError, match="users='ten' is not a whole number"):
        synthetic.parse_spec("synthetic:users=ten")
    with pytest.raises(DataError, match="memory=1.5 is out of range"):
        synthetic.parse_spec("synthetic:memory=1.5")


def test_usable_anywhere_a_dataset_name_is(use_lab_cache) -> None:
    prepared = prepare("synthetic:users=300,items=100,seed=1")
    assert prepared.sequences.num_users == 300
    assert prepared.properties["entropy_per_event"] > 0
    assert prepare("synthetic:users=300,items=100,seed=1").report == prepared.report  # cached
