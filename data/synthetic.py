"""A synthetic behaviour process for data-scaling studies, with a known irreducible loss.

Items: n_i items, each in one of K topics; base popularity w_i ∝ r_i^(-zipf) for a random rank
r_i. p(i | k) = w_i / Σ_{j in k} w_j for items i of topic k.
Users: taste θ_u ~ Dirichlet(concentration · 1_K); sequence length L_u = min_events +
floor(LogNormal), capped at max_events; the first event starts at a uniform time in a year.
Next item, given the user and the previous item j (the first event has no j):
    p(i | u, j) = memory · T[j, i] + (1 - memory) · θ_u[k(i)] · p(i | k(i))
where T[j, ·] spreads mass over `successors` items of j's topic, weighted by popularity (the
"memory" of the process: the last item predicts the next). For the first event p(i | u) = the
taste mixture alone.
Time: each gap is a new session with probability session_prob (LogNormal, median ~1 day) or a
within-session gap (LogNormal, median ~3 minutes), scaled by a per-user activity rate.

entropy_per_event is E[-log p(x_t | u, x_{t-1})] over all events, the loss of a model that knew
every user's taste and the process exactly: the floor any learned model's loss can approach. It is
estimated with exact per-event entropies on `entropy_samples` random events (its standard error
is reported too); event_log_probs() gives the exact log-probability of every generated event.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from data.errors import DataError
from data.interactions import Interactions

_START_SECONDS = 1_577_836_800  # 2020-01-01T00:00:00Z
_YEAR = 365 * 86_400


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    users: int = 1000
    items: int = 1000
    seed: int = 0
    topics: int = 20
    concentration: float = 0.1
    zipf: float = 1.1
    memory: float = 0.5
    successors: int = 10
    mean_events: float = 50.0
    min_events: int = 3
    max_events: int = 2000
    session_prob: float = 0.2
    entropy_samples: int = 4000

    def __str__(self) -> str:
        return "synthetic:" + ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))

    def validate(self) -> "SyntheticSpec":
        checks = {
            "users": self.users >= 1, "items": self.items >= 2, "topics": 1 <= self.topics <= self.items,
            "concentration": self.concentration > 0, "zipf": self.zipf >= 0, "memory": 0 <= self.memory <= 1,
            "successors": 1 <= self.successors, "min_events": self.min_events >= 1,
            "mean_events": self.mean_events > self.min_events, "max_events": self.max_events >= self.min_events,
            "session_prob": 0 <= self.session_prob <= 1, "entropy_samples": self.entropy_samples >= 10,
        }
        for key, ok in checks.items():
            if not ok:
                raise DataError(f"synthetic: {key}={getattr(self, key)} is out of range")
        return self


def parse_spec(text: str) -> SyntheticSpec:
    """`synthetic:users=100000,items=20000,seed=0,...`; omitted keys keep their defaults."""
    body = text[len("synthetic:"):] if text.startswith("synthetic:") else text
    fields = {f.name: f.type for f in dataclasses.fields(SyntheticSpec)}
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or key not in fields:
            raise DataError(f"synthetic: unknown key {key!r} in {text!r}; known: {', '.join(fields)}")
        try:
            values[key] = int(raw) if fields[key] in (int, "int") else float(raw)
        except ValueError:
            raise DataError(f"synthetic: {key}={raw!r} is not a {'whole number' if fields[key] in (int, 'int') else 'number'}") from None
    return SyntheticSpec(**values).validate()


class _TopicSampler:
    """Draws items within given topics, each item with probability p(i | k)."""

    def __init__(self, topic: np.ndarray, within_topic: np.ndarray):
        self.order = np.argsort(topic, kind="stable")
        self.sorted_topic = topic[self.order]
        self.cumulative = np.cumsum(within_topic[self.order])

    def draw(self, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        starts = np.searchsorted(self.sorted_topic, topics)
        ends = np.searchsorted(self.sorted_topic, topics, side="right")
        base = np.concatenate([[0.0], self.cumulative])[starts]
        target = base + rng.random(len(topics)) * (self.cumulative[ends - 1] - base)
        return self.order[np.clip(np.searchsorted(self.cumulative, target, side="right"), starts, ends - 1)]


@dataclasses.dataclass(frozen=True, eq=False)
class _World:
    """Everything the process conditions on."""

    topic: np.ndarray  # (items,) topic of each item
    within_topic: np.ndarray  # (items,) p(i | k(i))
    taste: np.ndarray  # (users, K)
    successor: np.ndarray  # (items, S) successor item ids (0-based), each with probability 1 / S
    sampler: _TopicSampler

    def draw_from_taste(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per user: a topic from θ_u, then an item of that topic."""
        taste_cdf = np.cumsum(self.taste[users], axis=1)
        below = taste_cdf < rng.random((len(users), 1)) * taste_cdf[:, -1:]
        return self.sampler.draw(np.minimum(below.sum(axis=1), taste_cdf.shape[1] - 1), rng)


def _world(spec: SyntheticSpec, rng: np.random.Generator) -> _World:
    n, k = spec.items, spec.topics
    weight = rng.permutation(np.arange(1, n + 1, dtype=np.float64)) ** -spec.zipf
    topic = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every topic has an item
    rng.shuffle(topic)
    within_topic = weight / np.bincount(topic, weights=weight, minlength=k)[topic]
    taste = rng.dirichlet(np.full(k, spec.concentration), size=spec.users)
    sampler = _TopicSampler(topic, within_topic)
    # Successors of item j: items of j's topic drawn by popularity (repeats add up in T[j, ·]).
    successor = sampler.draw(np.repeat(topic, spec.successors), rng).reshape(n, spec.successors)
    return _World(topic, within_topic, taste, successor, sampler)


def _simulate(spec: SyntheticSpec) -> tuple[_World, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(world, user, item, previous item or -1, timestamp) of every event, in per-user order."""
    rng = np.random.default_rng(spec.seed)
    world = _world(spec, rng)
    sigma = 1.0
    mu = np.log(spec.mean_events - spec.min_events) - sigma**2 / 2
    lengths = np.minimum(spec.min_events + np.floor(rng.lognormal(mu, sigma, spec.users)).astype(np.int64),
                         spec.max_events)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.empty(offsets[-1], dtype=np.int64)
    previous = np.full(offsets[-1], -1, dtype=np.int64)
    users = np.arange(spec.users)
    current = world.draw_from_taste(users, rng)
    items[offsets[:-1]] = current
    for step in range(1, int(lengths.max())):
        active = users[lengths > step]
        last = current[active]
        follow = rng.random(len(active)) < spec.memory
        chosen = np.empty(len(active), dtype=np.int64)
        pick = rng.integers(0, spec.successors, int(follow.sum()))
        chosen[follow] = world.successor[last[follow], pick]
        chosen[~follow] = world.draw_from_taste(active[~follow], rng)
        current[active] = chosen
        items[offsets[active] + step] = chosen
        previous[offsets[active] + step] = last
    user_of_event = np.repeat(users, lengths)
    activity = rng.lognormal(0.0, 0.5, spec.users)[user_of_event]
    new_session = rng.random(offsets[-1]) < spec.session_prob
    gaps = np.where(new_session, rng.lognormal(np.log(86_400.0), 1.5, offsets[-1]),
                    rng.lognormal(np.log(180.0), 1.0, offsets[-1])) / activity
    gaps[offsets[:-1]] = rng.uniform(0, _YEAR, spec.users)  # the first event's time from the start
    times = _START_SECONDS + np.floor(_segment_cumsum(gaps, offsets)).astype(np.int64)
    return world, user_of_event, items, previous, times


def _segment_cumsum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    total = np.cumsum(values)
    before = np.concatenate([[0.0], total])[offsets[:-1]]
    return total - np.repeat(before, np.diff(offsets))


def _probabilities(world: _World, spec: SyntheticSpec, user: int, previous: int) -> np.ndarray:
    """The full next-item distribution p(· | u, j)."""
    taste = world.taste[user, world.topic] * world.within_topic
    if previous < 0:
        return taste
    transition = np.bincount(world.successor[previous], minlength=spec.items) / spec.successors
    return spec.memory * transition + (1 - spec.memory) * taste


def _log_probs(world: _World, spec: SyntheticSpec, users: np.ndarray, items: np.ndarray, previous: np.ndarray) -> np.ndarray:
    taste = world.taste[users, world.topic[items]] * world.within_topic[items]
    has_previous = previous >= 0
    safe_previous = np.where(has_previous, previous, 0)
    transition = np.mean(world.successor[safe_previous] == items[:, None], axis=1)
    p = np.where(has_previous, spec.memory * transition + (1 - spec.memory) * taste, taste)
    return np.log(p)


def event_log_probs(spec: SyntheticSpec) -> np.ndarray:
    """Exact log p(x_t | u, x_{t-1}) of every event generate(spec) produces, in its order."""
    world, users, items, previous, _ = _simulate(spec)
    return _log_probs(world, spec, users, items, previous)


def generate(spec: SyntheticSpec) -> Interactions:
    """The interactions of the process (per-user chronological order), with its true entropy."""
    world, users, items, previous, times = _simulate(spec)
    rng = np.random.default_rng([spec.seed, 1])
    sample = rng.integers(0, len(items), min(spec.entropy_samples, len(items)))
    entropies = np.array([-np.sum(p[p > 0] * np.log(p[p > 0]))
                          for p in (_probabilities(world, spec, int(users[e]), int(previous[e])) for e in sample)])
    metadata = pd.DataFrame({"item": np.arange(1, spec.items + 1), "topic": world.topic})
    return Interactions(
        user=users + 1,
        item=items + 1,
        timestamp=times,
        item_metadata=metadata,
        source=str(spec),
        properties={
            "entropy_per_event": float(entropies.mean()),
            "entropy_per_event_stderr": float(entropies.std(ddof=1) / np.sqrt(len(entropies))),
        },
    )
