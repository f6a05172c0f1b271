"""A synthetic behaviour process for data-scaling studies, whose irreducible loss is known.

`synthetic:users=100000,items=20000,seed=0` works anywhere a dataset name does. The process
(0-based ids; u a user, i an item, k a topic, t the position of an event in u's sequence x_0, x_1, ...):

Items. Item i has popularity pop_i ∝ rank_i^(-zipf) (ranks a random permutation of 1..items) and
one topic k(i) (every topic has at least one item). Topic k has popularity π_k = Σ_{i∈k} pop_i and
within-topic distribution q_i = pop_i / π_{k(i)}. Each item j has `successors` slots succ[j, 1..S],
drawn i.i.d. from q restricted to j's topic (a slot repeated counts twice).

Users. Taste θ_u ~ Dirichlet(concentration · topics · π), so E[θ_u] = π and the taste prior of u is
    τ_u(i) = θ_u[k(i)] · q_i,      E_u[τ_u(i)] = pop_i   (the marginal popularity is exactly Zipf).
Sequence length n_u = min(max_events, min_events + floor(LogNormal(μ, length_sigma))), with μ chosen
so the mean is about mean_events.

Next item. With A_t = min(order, t) recent items available, lag weights w_l ∝ 2^-(l-1) normalised
over l = 1..A_t, m_t = memory if t ≥ 1 else 0:
    p(x_t = i | u, x_<t) = (1 - m_t) · τ_u(i)
        + m_t · Σ_{l=1..A_t} w_l · [ repeat · 1(i = x_{t-l}) + (1 - repeat) · #{s: succ[x_{t-l}, s] = i} / S ]
i.e. with probability 1 - m_t a fresh draw from the user's taste, otherwise recall one of the last
`order` items (more recent more likely) and either consume it again or move to one of its
successors. memory = 0 gives i.i.d. draws from τ_u; memory → 1 an item-to-item chain.

Time. Per-user activity a_u ~ LogNormal(0, 0.5). The first event is uniform in 2020; each later gap
is, with probability session_prob, a new session: Lomax(shape 1.5, median 1 day) capped at a year
(heavy-tailed), otherwise LogNormal(log 180 s, 1) (median 3 minutes), both divided by a_u.
Timestamps are whole seconds, non-decreasing per user; the time process does not affect items.

Entropy. The conditional entropy of event t is H_t = -Σ_i p(i | u, x_<t) log p(i | u, x_<t), computed
exactly in closed form from the terms above. properties["entropy_per_event"] (nats) is the mean of H_t
over the counted events: every event except each user's first (the targets of next-item
prediction; the first event has no history). It is the expected log-loss of a model that knows
θ_u, the successor table and the process -- the floor any learned model's loss can approach. When
there are at most entropy_samples counted events the mean is over all of them (exact,
entropy_per_event_stderr = 0); otherwise it is over a uniform random sample of entropy_samples
counted events, each H_t still exact, and the stderr is that of the sample mean. The test target of
a leave-one-out split is each user's last event; entropy_last_event is the exact mean of H_t there.

API: parse_spec(name) -> SyntheticSpec; generate(spec) -> Interactions (ids 1-based, source = the
canonical name str(spec)); simulate(spec) -> Simulation, which also holds the latent World and gives
per event log_probs() (log p(x_t | u, x_<t); over the counted events their mean matches
entropy_per_event up to sampling noise), entropies() (H_t) and next_item_probabilities() (the full
distribution, for small checks); event_log_probs(spec) is log_probs() of generate(spec)'s rows.
Every array is a deterministic function of the spec (numpy PCG64 streams spawned from seed).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from data.errors import DataError
from data.interactions import Interactions

GENERATOR_VERSION = 2  # bump when the same spec would produce different data
_START_SECONDS = 1_577_836_800  # 2020-01-01T00:00:00Z
_YEAR = 365 * 86_400
_IN_SESSION_MEDIAN, _IN_SESSION_SIGMA = 180.0, 1.0
_NEW_SESSION_MEDIAN, _NEW_SESSION_SHAPE = 86_400.0, 1.5
_ACTIVITY_SIGMA = 0.5
_LAG_DECAY = 0.5


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Every knob of the process (see the module docstring for the equations)."""

    users: int = 1000
    items: int = 1000
    seed: int = 0
    topics: int = 20  # latent topics; tastes and item-to-item moves live on them (memory: 16·users·topics bytes)
    concentration: float = 0.1  # Dirichlet concentration per topic: small = focused users
    zipf: float = 1.0  # popularity exponent: pop ∝ rank^-zipf
    memory: float = 0.5  # probability the next item comes from recent history instead of taste
    order: int = 3  # how many recent items the memory looks back on
    repeat: float = 0.2  # given memory: probability of consuming the recalled item again
    successors: int = 10  # successor slots per item (the sharpness of item-to-item moves)
    mean_events: float = 50.0
    min_events: int = 3
    max_events: int = 2000
    length_sigma: float = 1.0  # log-normal spread of sequence lengths (heavy tail)
    session_prob: float = 0.2  # probability that a gap between events starts a new session
    entropy_samples: int = 100_000  # counted events averaged for entropy_per_event at most

    def __post_init__(self) -> None:
        """Coerce every value to its key's type and check its range; DataError naming the key otherwise."""
        for field in dataclasses.fields(self):
            value, whole = getattr(self, field.name), field.type in (int, "int")
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not numeric or not math.isfinite(value) or (whole and value != int(value)):
                kind = "a whole number" if whole else "a finite number"
                raise DataError(f"synthetic: {field.name}={value!r} is not {kind}; known keys: {_KNOWN_KEYS}")
            object.__setattr__(self, field.name, int(value) if whole else float(value))
        for key, (rule, holds) in _RULES.items():
            if not holds(self):
                raise DataError(f"synthetic: {key}={getattr(self, key)!r} is out of range ({rule}); known keys: {_KNOWN_KEYS}")

    def __str__(self) -> str:
        """The canonical name: every key, sorted; parse_spec(str(spec)) == spec."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return "synthetic:" + ",".join(f"{key}={values[key]!r}" for key in sorted(values))


_KNOWN_KEYS = ", ".join(f.name for f in dataclasses.fields(SyntheticSpec))
_RULES: dict[str, tuple[str, Callable[[SyntheticSpec], bool]]] = {
    "users": ("must be >= 1", lambda s: s.users >= 1),
    "items": ("must be >= 2", lambda s: s.items >= 2),
    "seed": ("must be >= 0", lambda s: s.seed >= 0),
    "topics": ("must be in [1, items]", lambda s: 1 <= s.topics <= s.items),
    "concentration": ("must be > 0", lambda s: s.concentration > 0),
    "zipf": ("must be in [0, 10]", lambda s: 0 <= s.zipf <= 10),
    "memory": ("must be in [0, 1]", lambda s: 0 <= s.memory <= 1),
    "order": ("must be in [1, 64]", lambda s: 1 <= s.order <= 64),
    "repeat": ("must be in [0, 1]", lambda s: 0 <= s.repeat <= 1),
    "successors": ("must be in [1, 1000]", lambda s: 1 <= s.successors <= 1000),
    "min_events": ("must be >= 3 (a leave-one-out split needs 3)", lambda s: s.min_events >= 3),
    "mean_events": ("must be > min_events", lambda s: s.mean_events > s.min_events),
    "max_events": ("must be >= min_events", lambda s: s.max_events >= s.min_events),
    "length_sigma": ("must be in [0, 5]", lambda s: 0 <= s.length_sigma <= 5),
    "session_prob": ("must be in [0, 1]", lambda s: 0 <= s.session_prob <= 1),
    "entropy_samples": ("must be >= 100", lambda s: s.entropy_samples >= 100),
}


def parse_spec(text: str) -> SyntheticSpec:
    """`synthetic:users=100000,items=20000,seed=0,memory=0.5`; omitted keys keep their defaults.

    Raises DataError naming the key (and listing the known keys) for an unknown or repeated key, a
    value that is not a number of the key's type, or one out of range (checked by SyntheticSpec).
    """
    body = text.strip()
    if body.startswith("synthetic"):
        body = body[len("synthetic"):].lstrip(":")
    types = {f.name: f.type for f in dataclasses.fields(SyntheticSpec)}
    values: dict[str, int | float] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, sep, raw = (s.strip() for s in part.partition("="))
        if not sep:
            raise DataError(f"synthetic: {part!r} in {text!r} is not KEY=VALUE; known keys: {_KNOWN_KEYS}")
        if key not in types:
            raise DataError(f"synthetic: unknown key {key!r} in {text!r}; known keys: {_KNOWN_KEYS}")
        if key in values:
            raise DataError(f"synthetic: key {key!r} given twice in {text!r}; known keys: {_KNOWN_KEYS}")
        whole = types[key] in (int, "int")
        try:
            values[key] = int(raw) if whole else float(raw)
        except ValueError:
            kind = "a whole number" if whole else "a number"
            raise DataError(f"synthetic: {key}={raw!r} is not {kind}; known keys: {_KNOWN_KEYS}") from None
    return SyntheticSpec(**values)


def _xlogx(x: np.ndarray) -> np.ndarray:
    """x log x with 0 log 0 = 0."""
    return x * np.log(np.where(x > 0, x, 1.0))


@dataclasses.dataclass(frozen=True, eq=False)
class World:
    """The latent parameters of the process (0-based ids)."""

    popularity: np.ndarray  # (items,) pop_i, sums to 1
    topic: np.ndarray  # (items,) k(i)
    within_topic: np.ndarray  # (items,) q_i
    topic_entropy: np.ndarray  # (topics,) h_k = -Σ_{i∈k} q_i log q_i
    taste: np.ndarray  # (users, topics) θ_u
    successor: np.ndarray  # (items, S) succ[j, s]

    def taste_prior(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """τ_u(i) for paired arrays of users and items."""
        return self.taste[users, self.topic[items]] * self.within_topic[items]

    def taste_entropy(self, users: np.ndarray) -> np.ndarray:
        """-Σ_i τ_u(i) log τ_u(i) = H(θ_u) + Σ_k θ_u[k] h_k."""
        theta = self.taste[users]
        return -_xlogx(theta).sum(axis=1) + theta @ self.topic_entropy


class _CategoricalRows:
    """Draws from many categorical distributions at once: row r has probabilities probabilities[r]."""

    def __init__(self, probabilities: np.ndarray):
        self.probabilities = probabilities
        cumulative = np.cumsum(probabilities, axis=1)
        cumulative /= cumulative[:, -1:]
        # Row r's cumulative distribution shifted by r keeps all rows in one sorted array.
        self.shifted = (cumulative + np.arange(len(probabilities))[:, None]).ravel()

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        width = self.probabilities.shape[1]
        u = rng.random(len(rows))
        column = np.searchsorted(self.shifted, rows + u, side="right") - rows * width
        bad = (column >= width) | (column < 0)
        bad[~bad] = self.probabilities[rows[~bad], column[~bad]] == 0
        if bad.any():  # rounding of rows + u hit an empty category: search the row itself
            cdf = np.cumsum(self.probabilities[rows[bad]], axis=1)
            column[bad] = np.minimum((cdf <= u[bad, None] * cdf[:, -1:]).sum(axis=1), width - 1)
        return column


class _WithinTopic:
    """Draws an item of a given topic k with probability q_i."""

    def __init__(self, topic: np.ndarray, within_topic: np.ndarray):
        self.order = np.argsort(topic, kind="stable")
        sorted_topic = topic[self.order]
        self.start = np.searchsorted(sorted_topic, np.arange(topic.max() + 1))
        self.end = np.searchsorted(sorted_topic, np.arange(topic.max() + 1), side="right")
        within = np.cumsum(within_topic[self.order])
        before = np.concatenate([[0.0], within])[self.start]
        self.shifted = sorted_topic + (within - before[sorted_topic])  # k + cdf within k, sorted

    def draw(self, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        found = np.searchsorted(self.shifted, topics + rng.random(len(topics)), side="right")
        return self.order[np.clip(found, self.start[topics], self.end[topics] - 1)]


def _world(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[World, _CategoricalRows, _WithinTopic]:
    n, k = spec.items, spec.topics
    weight = rng.permutation(np.arange(1, n + 1, dtype=np.float64)) ** -spec.zipf
    popularity = weight / weight.sum()
    topic = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    rng.shuffle(topic)
    topic_popularity = np.bincount(topic, weights=popularity, minlength=k)
    within_topic = popularity / topic_popularity[topic]
    topic_entropy = -np.bincount(topic, weights=_xlogx(within_topic), minlength=k)
    # θ ~ Dirichlet(α) via Gamma(α) = Gamma(α + 1) · U^(1/α), in logs so tiny α cannot underflow to 0/0.
    alpha = spec.concentration * k * topic_popularity
    log_gamma = np.log(rng.standard_gamma(alpha + 1, size=(spec.users, k))) + np.log(rng.random((spec.users, k))) / alpha
    taste = np.exp(log_gamma - log_gamma.max(axis=1, keepdims=True))
    taste /= taste.sum(axis=1, keepdims=True)
    in_topic = _WithinTopic(topic, within_topic)
    successor = in_topic.draw(np.repeat(topic, spec.successors), rng).reshape(n, spec.successors)
    world = World(popularity, topic, within_topic, topic_entropy, taste, successor)
    return world, _CategoricalRows(taste), in_topic


def _lag_cumulative(order: int) -> np.ndarray:
    """cum[l-1] = Σ_{j ≤ l} 2^-(j-1): the unnormalised lag weights' running sums."""
    return np.cumsum(_LAG_DECAY ** np.arange(order))


@dataclasses.dataclass(frozen=True, eq=False)
class Simulation:
    """One draw of the process: the world and every event (0-based ids), users in order, each
    user's events in time order."""

    spec: SyntheticSpec
    world: World
    offsets: np.ndarray  # (users + 1,) user u's events are rows offsets[u]:offsets[u + 1]
    user: np.ndarray
    item: np.ndarray
    position: np.ndarray  # t: the event's index within its user's sequence
    timestamp: np.ndarray  # int64 seconds

    @property
    def counted(self) -> np.ndarray:
        """The events entropy_per_event averages over: all but each user's first."""
        return self.position >= 1

    def _memory_slots(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items the memory term can produce at each row and their masses (rows x order·(1+S)).

        Slots of lags that do not exist hold item -1 and mass 0; an item may fill several slots.
        """
        spec, pos = self.spec, self.position[rows]
        items, masses = [], []
        for lag in range(1, spec.order + 1):
            valid = pos >= lag
            previous = np.where(valid, self.item[np.maximum(rows - lag, 0)], -1)
            mass = self._lag_mass(rows, lag)
            items += [previous[:, None], np.where(valid[:, None], self.world.successor[previous], -1)]
            masses += [(mass * spec.repeat)[:, None],
                       np.repeat((mass * (1 - spec.repeat) / spec.successors)[:, None], spec.successors, axis=1)]
        return np.concatenate(items, axis=1), np.concatenate(masses, axis=1)

    def _taste_mass(self, rows: np.ndarray) -> np.ndarray:
        """1 - m_t."""
        return np.where(self.position[rows] >= 1, 1.0 - self.spec.memory, 1.0)

    def _lag_mass(self, rows: np.ndarray, lag: int) -> np.ndarray:
        """m_t · w_lag at each row: the mass the memory term puts on recalling x_{t-lag} (0 if t < lag)."""
        pos, order = self.position[rows], self.spec.order
        cumulative = _lag_cumulative(order)
        total = cumulative[np.clip(np.minimum(pos, order) - 1, 0, None)]
        return np.where(pos >= lag, self.spec.memory * _LAG_DECAY ** (lag - 1) / total, 0.0)

    def log_probs(self, rows: np.ndarray | None = None, chunk: int = 262_144) -> np.ndarray:
        """Exact log p(x_t | u, x_<t) of the events at `rows` (default: all, in row order)."""
        rows = np.arange(len(self.item)) if rows is None else np.asarray(rows)
        return np.concatenate([self._log_probs(rows[i:i + chunk]) for i in range(0, len(rows), chunk)] or [np.zeros(0)])

    def _log_probs(self, rows: np.ndarray) -> np.ndarray:
        spec, item = self.spec, self.item[rows]
        p = self._taste_mass(rows) * self.world.taste_prior(self.user[rows], item)
        for lag in range(1, spec.order + 1):
            previous = self.item[np.maximum(rows - lag, 0)]
            successor_hits = np.count_nonzero(self.world.successor[previous] == item[:, None], axis=1)
            p += self._lag_mass(rows, lag) * (
                spec.repeat * (previous == item) + (1 - spec.repeat) / spec.successors * successor_hits)
        return np.log(p)

    def entropies(self, rows: np.ndarray | None = None, chunk: int = 65_536) -> np.ndarray:
        """Exact H_t = -Σ_i p(i | u, x_<t) log p(i | u, x_<t) at `rows` (default: all), in nats.

        With a = 1 - m_t and s_i the memory mass on item i (nonzero on at most order·(1+S) items C):
        H_t = a (H(τ_u) - log a) + Σ_{i∈C} [ aτ_i log aτ_i - p_i log p_i ].
        """
        rows = np.arange(len(self.item)) if rows is None else np.asarray(rows)
        return np.concatenate([self._entropies(rows[i:i + chunk]) for i in range(0, len(rows), chunk)] or [np.zeros(0)])

    def _entropies(self, rows: np.ndarray) -> np.ndarray:
        users, a = self.user[rows], self._taste_mass(rows)
        entropy = a * self.world.taste_entropy(users) - _xlogx(a)
        slot_items, slot_masses = self._memory_slots(rows)
        order = np.argsort(slot_items, axis=1, kind="stable")
        slot_items = np.take_along_axis(slot_items, order, axis=1)
        running = np.cumsum(np.take_along_axis(slot_masses, order, axis=1), axis=1)
        last_of_run = np.ones_like(slot_items, dtype=bool)
        last_of_run[:, :-1] = slot_items[:, :-1] != slot_items[:, 1:]
        row, column = np.nonzero(last_of_run)
        through = running[row, column]  # the row's memory mass up to and including this run
        first_run_of_row = np.ones(len(row), dtype=bool)
        first_run_of_row[1:] = row[1:] != row[:-1]
        s = through - np.where(first_run_of_row, 0.0, np.roll(through, 1))
        item = slot_items[row, column]
        keep = item >= 0
        row, item, s = row[keep], item[keep], s[keep]
        taste = a[row] * self.world.taste_prior(users[row], item)
        correction = np.bincount(row, weights=_xlogx(taste) - _xlogx(taste + s), minlength=len(rows))
        return entropy + correction

    def next_item_probabilities(self, rows: np.ndarray) -> np.ndarray:
        """The full distributions p(· | u, x_<t) at `rows`: dense (len(rows), items); for small checks."""
        rows = np.asarray(rows)
        world = self.world
        dense = self._taste_mass(rows)[:, None] * world.taste[self.user[rows]][:, world.topic] * world.within_topic
        slot_items, slot_masses = self._memory_slots(rows)
        row = np.repeat(np.arange(len(rows)), slot_items.shape[1])
        keep = slot_items.ravel() >= 0
        np.add.at(dense, (row[keep], slot_items.ravel()[keep]), slot_masses.ravel()[keep])
        return dense

    def entropy_properties(self) -> dict[str, float]:
        """entropy_per_event (+ stderr and how many events it averages) and entropy_last_event."""
        counted = np.flatnonzero(self.counted)
        rows = counted
        if len(counted) > self.spec.entropy_samples:
            rng = np.random.default_rng(_streams(self.spec.seed)[4])
            rows = np.sort(rng.choice(counted, self.spec.entropy_samples, replace=False))
        entropy = self.entropies(rows)
        sampled = len(rows) < len(counted)
        return {
            "entropy_per_event": float(entropy.mean()),
            "entropy_per_event_stderr": float(entropy.std(ddof=1) / np.sqrt(len(entropy))) if sampled else 0.0,
            "entropy_events": float(len(rows)),
            "entropy_last_event": float(self.entropies(self.offsets[1:] - 1).mean()),
            "entropy_first_event": float(self.world.taste_entropy(np.arange(self.spec.users)).mean()),
            "generator_version": float(GENERATOR_VERSION),
        }

    def interactions(self) -> Interactions:
        """The events as the canonical table: ids 1..users and 1..items, source = str(spec)."""
        import pandas as pd  # the floors import this module in every trial: pandas only where a table is made

        world = self.world
        metadata = pd.DataFrame({
            "item": np.arange(1, self.spec.items + 1, dtype=np.int64),
            "topic": world.topic.astype(np.int64),
            "popularity": world.popularity,
        })
        return Interactions(
            user=self.user + 1,
            item=self.item + 1,
            timestamp=self.timestamp,
            item_metadata=metadata,
            source=str(self.spec),
            properties=self.entropy_properties(),
        )


def simulate(spec: SyntheticSpec) -> Simulation:
    """Draw the world and every event of `spec`; deterministic in spec (numpy PCG64 streams)."""
    world_rng, length_rng, item_rng, time_rng = (np.random.default_rng(s) for s in _streams(spec.seed)[:4])
    world, taste_sampler, in_topic = _world(spec, world_rng)
    lengths = _lengths(spec, length_rng)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    user = np.repeat(np.arange(spec.users), lengths)
    position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    item = _items(spec, world, taste_sampler, in_topic, user, position, item_rng)
    timestamp = _timestamps(spec, offsets, user, time_rng)
    return Simulation(spec, world, offsets, user, item, position, timestamp)


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent streams for the world, lengths, items, times and the entropy sample."""
    return np.random.SeedSequence(seed).spawn(5)


def _lengths(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    mu = np.log(spec.mean_events - spec.min_events) - spec.length_sigma**2 / 2
    extra = np.floor(rng.lognormal(mu, spec.length_sigma, spec.users))
    return np.minimum(spec.min_events + extra, spec.max_events).astype(np.int64)


def _items(
    spec: SyntheticSpec,
    world: World,
    taste_sampler: _CategoricalRows,
    in_topic: _WithinTopic,
    user: np.ndarray,
    position: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """x_t for every event: fresh taste draws everywhere at once, then memory moves in time order."""
    from_memory = (position >= 1) & (rng.random(len(user)) < spec.memory)
    item = np.empty(len(user), dtype=np.int64)
    fresh = np.flatnonzero(~from_memory)
    item[fresh] = in_topic.draw(taste_sampler.draw(user[fresh], rng), rng)
    recalled = np.flatnonzero(from_memory)
    small = np.uint16 if spec.max_events <= 2**16 else np.int64  # 16-bit keys sort by radix sort
    recalled = recalled[np.argsort(position[recalled].astype(small), kind="stable")]
    cumulative = _lag_cumulative(spec.order)
    available = np.minimum(position[recalled], spec.order)
    lag = 1 + np.searchsorted(cumulative, rng.random(len(recalled)) * cumulative[available - 1], side="right")
    source = recalled - np.minimum(lag, available)
    again = rng.random(len(recalled)) < spec.repeat
    slot = rng.integers(0, spec.successors, len(recalled))
    # Each step depends only on earlier positions, so all users advance together one position at a time.
    bounds = np.flatnonzero(np.diff(position[recalled], prepend=-1, append=position.max() + 1))
    for start, stop in zip(bounds[:-1], bounds[1:]):
        previous = item[source[start:stop]]
        item[recalled[start:stop]] = np.where(again[start:stop], previous, world.successor[previous, slot[start:stop]])
    return item


def _timestamps(spec: SyntheticSpec, offsets: np.ndarray, user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(user)
    activity = rng.lognormal(0.0, _ACTIVITY_SIGMA, spec.users)
    new_session = rng.random(n) < spec.session_prob
    gaps = np.empty(n)
    lomax_scale = _NEW_SESSION_MEDIAN / (2 ** (1 / _NEW_SESSION_SHAPE) - 1)
    uniform = rng.random(int(new_session.sum()))
    gaps[new_session] = np.minimum(lomax_scale * (uniform ** (-1 / _NEW_SESSION_SHAPE) - 1), _YEAR)
    gaps[~new_session] = rng.lognormal(np.log(_IN_SESSION_MEDIAN), _IN_SESSION_SIGMA, n - len(uniform))
    gaps /= activity[user]
    gaps[offsets[:-1]] = rng.uniform(0, _YEAR, spec.users)  # the first event's offset from the start
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(np.concatenate([[0.0], elapsed])[offsets[:-1]], np.diff(offsets))
    return _START_SECONDS + np.floor(elapsed).astype(np.int64)


def generate(spec: SyntheticSpec) -> Interactions:
    """The interactions of the process (users in order, each in time order) with its true entropy.

    properties: entropy_per_event (nats, see the module docstring), entropy_per_event_stderr (0 when
    exact), entropy_events, entropy_last_event, entropy_first_event, generator_version.
    item_metadata: item, topic (latent, 0-based), popularity (pop_i).
    """
    return simulate(spec).interactions()


def event_log_probs(spec: SyntheticSpec) -> np.ndarray:
    """Exact log p(x_t | u, x_<t) of every event generate(spec) produces, in its row order."""
    return simulate(spec).log_probs()
