"""The synthetic behaviour process: its reported entropy is the true log-loss, and its knobs act."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data import synthetic
from data.dataset import prepare
from data.errors import DataError

SMALL = synthetic.parse_spec("synthetic:users=1500,items=400,seed=3,mean_events=30")


@pytest.fixture(scope="module")
def small() -> synthetic.Simulation:
    return synthetic.simulate(SMALL)


def _previous(sim: synthetic.Simulation, lag: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rows with at least `lag` earlier events of the same user, and the item `lag` events back."""
    rows = np.flatnonzero(sim.position >= lag)
    return rows, sim.item[rows - lag]


def test_reported_entropy_is_the_true_processs_log_loss(small: synthetic.Simulation) -> None:
    generated = small.interactions()
    log_probs = synthetic.event_log_probs(SMALL)
    assert np.array_equal(log_probs, small.log_probs()) and len(log_probs) == len(generated)
    assert np.all(np.isfinite(log_probs))  # the generator never produces what the process calls impossible
    counted = small.counted
    props = generated.properties
    assert props["entropy_events"] == counted.sum() and props["entropy_per_event_stderr"] == 0.0  # exact
    # -log p(x_t) - H_t has mean 0 under the true process; its spread sets the tolerance.
    surprise = -log_probs[counted] - small.entropies()[counted]
    se = surprise.std() / np.sqrt(counted.sum())
    assert se < 0.02
    assert abs(-log_probs[counted].mean() - props["entropy_per_event"]) < 4 * se
    assert 0.5 < props["entropy_per_event"] < np.log(SMALL.items)  # far better than uniform guessing

    last = small.offsets[1:] - 1
    surprise_last = -log_probs[last] - small.entropies(last)
    assert abs(-log_probs[last].mean() - props["entropy_last_event"]) < 4 * surprise_last.std() / np.sqrt(len(last))


def test_sampled_entropy_reports_an_honest_standard_error(small: synthetic.Simulation) -> None:
    sampled = synthetic.simulate(dataclasses.replace(SMALL, entropy_samples=2000)).entropy_properties()
    exact = small.entropy_properties()["entropy_per_event"]
    assert sampled["entropy_events"] == 2000 and 0.005 < sampled["entropy_per_event_stderr"] < 0.05
    assert abs(sampled["entropy_per_event"] - exact) < 4 * sampled["entropy_per_event_stderr"]


@pytest.mark.parametrize("overrides", [
    {},
    {"memory": 0.0},
    {"memory": 1.0, "repeat": 1.0},  # every item repeats the first: zero entropy after it
    {"memory": 0.7, "order": 5, "repeat": 0.5, "successors": 3, "concentration": 0.01},
])
def test_closed_form_entropy_and_log_probs_match_the_full_distribution(overrides: dict) -> None:
    spec = dataclasses.replace(SMALL, users=200, **overrides)
    sim = synthetic.simulate(spec)
    assert np.all(np.isfinite(sim.log_probs()))
    rows = np.random.default_rng(0).choice(len(sim.item), 400, replace=False)
    p = sim.next_item_probabilities(rows)
    assert p.shape == (400, spec.items) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    brute_force = -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=1)
    np.testing.assert_allclose(sim.entropies(rows), brute_force, atol=1e-10)
    np.testing.assert_allclose(sim.log_probs(rows), np.log(p[np.arange(400), sim.item[rows]]), atol=1e-10)


@pytest.mark.slow
def test_events_are_drawn_from_the_stated_distribution(small: synthetic.Simulation) -> None:
    """Chi-square of how each event relates to the previous one, expected (from p) vs observed."""
    rows = np.random.default_rng(1).choice(np.flatnonzero(small.counted), 12_000, replace=False)
    previous = small.item[rows - 1]
    successor = small.world.successor[previous]
    topic = small.world.topic

    def kind(candidates: np.ndarray) -> np.ndarray:  # 0 repeat, 1 successor, 2 same topic, 3 other topic
        is_successor = (candidates[..., None] == successor.reshape(len(rows), *([1] * (candidates.ndim - 1)), -1)).any(-1)
        previous_b = previous.reshape(len(rows), *([1] * (candidates.ndim - 1)))
        same_topic = topic[candidates] == topic[previous_b]
        return np.select([candidates == previous_b, is_successor, same_topic], [0, 1, 2], 3)

    p = small.next_item_probabilities(rows)
    every_item = np.broadcast_to(np.arange(SMALL.items), p.shape)
    expected = np.array([(p * (kind(every_item) == k)).sum() for k in range(4)])
    observed = np.bincount(kind(small.item[rows]), minlength=4)
    assert np.all(expected > 50)
    assert ((observed - expected) ** 2 / expected).sum() < 16.3  # chi-square, 3 dof, p = 0.001


def test_same_seed_same_bytes_other_seed_other_data() -> None:
    first, again = synthetic.generate(SMALL), synthetic.generate(SMALL)
    for name in ("user", "item", "timestamp"):
        assert getattr(first, name).tobytes() == getattr(again, name).tobytes()
    assert first.properties == again.properties and first.item_metadata.equals(again.item_metadata)
    other = synthetic.generate(dataclasses.replace(SMALL, seed=4))
    assert not np.array_equal(first.item[:1000], other.item[:1000])
    assert not np.array_equal(first.timestamp[:1000], other.timestamp[:1000])


@pytest.mark.parametrize("zipf", [0.0, 0.7, 1.3])
def test_item_popularity_follows_the_configured_power_law(zipf: float) -> None:
    spec = synthetic.parse_spec(f"synthetic:users=2000,items=500,seed=1,mean_events=20,zipf={zipf}")
    counts = np.sort(np.bincount(synthetic.generate(spec).item))[::-1][:100]
    slope = np.polyfit(np.log(np.arange(1, 101)), np.log(counts), 1)[0]
    assert abs(slope + zipf) < 0.1


def test_memory_makes_the_next_item_predictable() -> None:
    entropy, repeats, moves, topic_stays = [], [], [], []
    for memory in (0.0, 0.4, 0.8):
        sim = synthetic.simulate(dataclasses.replace(SMALL, users=600, memory=memory))
        rows, previous = _previous(sim)
        entropy.append(sim.entropy_properties()["entropy_per_event"])
        repeats.append(np.mean(sim.item[rows] == previous))
        moves.append(np.mean((sim.world.successor[previous] == sim.item[rows, None]).any(axis=1)))
        topic_stays.append(np.mean(sim.world.topic[sim.item[rows]] == sim.world.topic[previous]))
    assert entropy[0] > entropy[1] + 0.1 > entropy[2] + 0.2
    for rate in (repeats, moves, topic_stays):  # x_t = x_{t-1}; x_t a successor of x_{t-1}; same topic
        assert rate[0] + 0.05 < rate[1] < rate[2] - 0.05


def test_order_sets_how_far_back_the_memory_reaches() -> None:
    def reachable(sim: synthetic.Simulation, lags: int) -> np.ndarray:
        rows = np.flatnonzero(sim.position >= lags)
        return np.any([(sim.world.successor[sim.item[rows - lag]] == sim.item[rows, None]).any(axis=1)
                       for lag in range(1, lags + 1)], axis=0)

    chain = dataclasses.replace(SMALL, users=300, memory=1.0, repeat=0.0)
    assert reachable(synthetic.simulate(dataclasses.replace(chain, order=1)), 1).all()
    two_back = synthetic.simulate(dataclasses.replace(chain, order=2))
    assert reachable(two_back, 2).all() and not reachable(two_back, 1).all()


def test_sequence_lengths_ids_and_timestamps(small: synthetic.Simulation) -> None:
    generated = small.interactions()
    assert generated.user.dtype == generated.item.dtype == generated.timestamp.dtype == np.int64
    assert np.all(np.diff(generated.user) >= 0) and generated.user.min() == 1
    assert generated.item.min() >= 1 and generated.item.max() <= SMALL.items
    lengths = np.bincount(generated.user)[1:]
    assert len(lengths) == SMALL.users and lengths.min() >= SMALL.min_events and lengths.max() <= SMALL.max_events
    assert abs(lengths.mean() / SMALL.mean_events - 1) < 0.1
    assert np.percentile(lengths, 99) > 4 * np.median(lengths)  # heavy tail
    same_user = generated.user[1:] == generated.user[:-1]
    gaps = np.diff(generated.timestamp)[same_user]
    assert np.all(gaps >= 0)
    assert np.median(gaps) < 3600 < np.percentile(gaps, 90)  # short gaps in sessions, long between
    no_breaks = synthetic.generate(dataclasses.replace(SMALL, users=300, session_prob=0.0))
    assert np.percentile(np.diff(no_breaks.timestamp)[no_breaks.user[1:] == no_breaks.user[:-1]], 99) < 86_400


def test_item_metadata_gives_every_items_latent_topic_and_popularity(small: synthetic.Simulation) -> None:
    metadata = small.interactions().item_metadata
    assert list(metadata["item"]) == list(range(1, SMALL.items + 1))
    assert set(metadata["topic"]) == set(range(SMALL.topics))
    assert abs(metadata["popularity"].sum() - 1) < 1e-12
    counts = np.bincount(small.item, minlength=SMALL.items)
    assert np.corrcoef(counts, metadata["popularity"])[0, 1] > 0.9


def test_spec_parsing_canonical_name_and_errors() -> None:
    spec = synthetic.parse_spec("synthetic:users=10,items=20,memory=0.25")
    assert (spec.users, spec.items, spec.memory, spec.seed) == (10, 20, 0.25, 0)
    assert synthetic.parse_spec("synthetic") == synthetic.parse_spec("synthetic:") == synthetic.SyntheticSpec()
    name = str(spec)
    keys = [part.split("=")[0] for part in name.removeprefix("synthetic:").split(",")]
    assert keys == sorted(keys) == sorted(f.name for f in dataclasses.fields(spec))
    assert synthetic.parse_spec(name) == spec and str(synthetic.parse_spec(name)) == name
    assert str(synthetic.SyntheticSpec(memory=1)) == str(synthetic.SyntheticSpec(memory=1.0))  # one name per spec
    assert synthetic.generate(spec).source == name
    for text, message in [
        ("synthetic:user=10", "unknown key 'user'.*known keys: users, items, seed, topics"),
        ("synthetic:users=ten", "users='ten' is not a whole number.*known keys: users"),
        ("synthetic:users=1.5", "users='1.5' is not a whole number"),
        ("synthetic:memory=high", "memory='high' is not a number"),
        ("synthetic:memory=nan", "memory=nan is not a finite number"),
        ("synthetic:users=0", r"users=0 is out of range \(must be >= 1\).*known keys"),
        ("synthetic:memory=1.5", r"memory=1.5 is out of range \(must be in \[0, 1\]\)"),
        ("synthetic:min_events=2", "min_events=2 is out of range"),
        ("synthetic:items=5,topics=6", "topics=6 is out of range"),
        ("synthetic:users=5,users=6", "key 'users' given twice"),
        ("synthetic:users", "'users' .* is not KEY=VALUE"),
    ]:
        with pytest.raises(DataError, match=message):
            synthetic.parse_spec(text)
    with pytest.raises(DataError, match="zipf=-1.0 is out of range"):
        dataclasses.replace(spec, zipf=-1.0)


def test_usable_anywhere_a_dataset_name_is(use_lab_cache) -> None:
    prepared = prepare("synthetic:users=300,items=100,seed=1")
    assert prepared.sequences.num_users == 300
    assert prepared.properties["entropy_per_event"] > 0
    assert prepare("synthetic:users=300,items=100,seed=1").report == prepared.report  # cached
