"""A synthetic source's loss floors: the Bayes floor against a sampled posterior, both floors
against the dense next-item distribution, and a floor for other events than those evaluated refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data import synthetic
from data.dataset import prepare
from data.errors import DataError
from data.floors import loss_floors
from data.split import eval_subset, leave_one_out

NAME = "synthetic:users=400,items=60,topics=3,memory=0,mean_events=12,seed=5"


@pytest.fixture(scope="module")
def split():
    return leave_one_out(prepare(NAME, use_cache=False).sequences, "holdout")


@pytest.fixture(scope="module")
def sim() -> synthetic.Simulation:
    return synthetic.simulate(synthetic.parse_spec(NAME))


def _rows(sim: synthetic.Simulation, targets) -> np.ndarray:
    return sim.offsets[np.asarray(targets.history.user_ids) - 1] + targets.history.lengths


def test_bayes_floor_is_the_posterior_predictive_of_a_sampled_posterior(split, sim) -> None:
    """Importance sampling: θ from its Dirichlet prior, weighted by the window's likelihood."""
    window = 4
    rows = _rows(sim, split.valid)[:40]
    world, spec = sim.world, sim.spec
    alpha = spec.concentration * spec.topics * np.bincount(world.topic, weights=world.popularity, minlength=spec.topics)
    thetas = np.random.default_rng(0).dirichlet(alpha, size=400_000)
    expected = []
    for row in rows:
        seen = sim.item[row - min(sim.position[row], window):row]
        weight = np.prod(thetas[:, world.topic[seen]], axis=1)
        p = (weight @ thetas[:, world.topic[sim.item[row]]]) / weight.sum() * world.within_topic[sim.item[row]]
        expected.append(-np.log(p))  # every item is present: no renormalisation
    assert np.all(np.isin(np.arange(1, spec.items + 1), split.valid.history.item_ids))
    first = dataclasses.replace(split.valid, history=split.valid.history.select_users(np.arange(40)),
                                targets=split.valid.targets[:40], target_timestamps=split.valid.target_timestamps[:40])
    closed = loss_floors(NAME, {"": first}, window)
    assert closed["floor_events"] == 40 and closed["floor_bayes"] > closed["floor_oracle"]
    assert closed["floor_bayes"] == pytest.approx(np.mean(expected), abs=2e-3)  # doubling α moves it 9e-3


def test_floors_are_the_log_loss_and_entropy_of_the_renormalised_distribution(split, sim) -> None:
    rows = _rows(sim, split.test)
    dense = sim.next_item_probabilities(rows)  # memory 0: the oracle, τ_u
    present = np.zeros(sim.spec.items, bool)
    present[[0, 5, 7]] = True
    present = ~present  # pretend three items never occur: they leave the softmax
    targets = sim.item[rows]
    keep = present[targets]
    dense = np.where(present, dense, 0.0)
    dense /= dense.sum(axis=1, keepdims=True)
    history = dataclasses.replace(split.test.history, item_ids=split.test.history.item_ids[present])
    remap = np.cumsum(present)  # dense ids of the kept items, in the shrunk catalogue
    chosen = dataclasses.replace(split.test, history=history.select_users(np.flatnonzero(keep)),
                                 targets=remap[targets[keep]].astype(np.int32),
                                 target_timestamps=split.test.target_timestamps[keep])
    floors = loss_floors(NAME, {"test_": chosen}, 10)
    p = dense[keep, targets[keep]]
    assert floors["test_floor_oracle"] == pytest.approx(-np.log(p).mean(), rel=1e-12)
    entropy = -np.sum(np.where(dense > 0, dense * np.log(np.where(dense > 0, dense, 1)), 0), axis=1)[keep]
    assert floors["test_floor_oracle_expected"] == pytest.approx(entropy.mean(), rel=1e-12)
    assert floors["test_floor_oracle_stderr"] == pytest.approx(np.log(p).std(ddof=1) / np.sqrt(keep.sum()), rel=1e-9)


def test_more_history_lowers_the_bayes_floor_toward_the_oracle(split) -> None:
    short, long = (loss_floors(NAME, {"": split.valid}, w) for w in (1, 50))
    assert long["floor_oracle"] == short["floor_oracle"]
    assert short["floor_bayes_expected"] > long["floor_bayes_expected"] > long["floor_oracle_expected"]


def test_a_floor_of_other_events_is_refused(split) -> None:
    shifted = dataclasses.replace(split.valid, history=split.valid.history.drop_last(1))  # one event early
    with pytest.raises(DataError, match="the floor would be of other events"):
        loss_floors(NAME, {"": shifted}, 5)
    assert loss_floors("ml-100k", {"": split.valid}, 5) == {}


def test_memory_gives_the_oracle_floor_only() -> None:
    name = "synthetic:users=200,items=40,topics=3,memory=0.5,mean_events=10,seed=1"
    split = leave_one_out(prepare(name, use_cache=False).sequences, "holdout")
    floors = loss_floors(name, {"": split.valid}, 5)
    sim = synthetic.simulate(synthetic.parse_spec(name))
    assert "floor_bayes" not in floors
    assert floors["floor_oracle"] == pytest.approx(-sim.log_probs(_rows(sim, split.valid)).mean(), rel=1e-12)


def test_a_fixed_evaluation_subset_keeps_training_and_gives_the_floor_of_its_own_users(split) -> None:
    subset = eval_subset(split, 50)
    again = eval_subset(split, 50)
    assert subset.train is split.train and eval_subset(split, 0) is split and eval_subset(split, 10**6) is split
    users = subset.valid.history.user_ids
    assert len(users) == 50 and np.array_equal(users, again.valid.history.user_ids)  # the same users every time
    assert np.array_equal(users, subset.test.history.user_ids) and np.all(np.diff(users) > 0)
    chosen = np.searchsorted(split.valid.history.user_ids, users)
    assert np.array_equal(subset.valid.targets, split.valid.targets[chosen])
    assert np.array_equal(subset.test.history.user_items(3), split.test.history.user_items(int(chosen[3])))
    floors = loss_floors(NAME, {"": subset.valid}, 5)
    assert floors["floor_events"] == 50
