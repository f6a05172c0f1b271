"""The irreducible loss of a synthetic source on exactly the events a trial evaluates.

A trial's eval loss is the mean full-softmax log-loss -log p(target | history window) over one
target per user (data.split's validation or test target), the model seeing only the last `window`
items before it and scoring only the items the data holds. Two floors, on the same targets:

- oracle: the generator's own p(x_t | u, x_<t) (it knows the user's taste θ_u), renormalised over
  the items the data holds. Exact for any memory; needs every item present when memory > 0.
- bayes: the best any sequence model can do, θ_u integrated out under its Dirichlet prior given the
  window. With memory = 0 the window's events are i.i.d. draws from τ_u(i) = θ_u[k(i)] q_i, and the
  posterior predictive has a closed form (Dirichlet-multinomial over topics; c_k the window's count
  of topic k, n = Σ c_k, α_k = concentration · topics · π_k):
      p(i | window) = q_i (α_{k(i)} + c_{k(i)}) / (Σ_k α_k + n),
  renormalised over the items the data holds. Not computed when memory > 0 (no closed form).

Each floor is the realised mean over the targets ("floor_*", the number an eval loss is compared
with, with the standard error of that mean) and the expected one ("floor_*_expected", the mean of the
predictive's entropy at each target): over many users the two agree within a few standard errors.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from data import synthetic
from data.errors import DataError
from data.split import EvalTargets


def loss_floors(source: str, targets: Mapping[str, EvalTargets], window: int) -> dict[str, float]:
    """{prefix + "floor_oracle", prefix + "floor_bayes", ...} for each (prefix, targets) of a
    synthetic source; {} for any other source.

    targets: the split's validation or test targets in dense ids, by the prefix their floors get;
    window: how many history items the model sees before a target. Raises DataError if a target is
    not the generator's event at that place (a floor for other events than those evaluated)."""
    if not source.startswith("synthetic:"):
        return {}
    sim = synthetic.simulate(synthetic.parse_spec(source))
    floors: dict[str, float] = {}
    for prefix, chosen in targets.items():
        floors.update({prefix + key: value for key, value in _floors(sim, chosen, window).items()})
    return floors


def _floors(sim: synthetic.Simulation, targets: EvalTargets, window: int) -> dict[str, float]:
    rows = _generator_rows(sim, targets)
    present = np.zeros(sim.spec.items, bool)
    present[np.asarray(targets.history.item_ids, np.int64) - 1] = True
    floors: dict[str, float] = {}
    if sim.spec.memory == 0.0:
        floors.update(_named("oracle", *_topic_mixture_losses(sim, rows, sim.world.taste[sim.user[rows]], present)))
        floors.update(_named("bayes", *_topic_mixture_losses(sim, rows, _posterior_topics(sim, rows, window), present)))
    elif present.all():
        floors.update(_named("oracle", -sim.log_probs(rows), sim.entropies(rows)))
    floors["floor_events"] = float(len(rows))
    return floors


def _generator_rows(sim: synthetic.Simulation, targets: EvalTargets) -> np.ndarray:
    """The simulation's row of each target: user id - 1, at position = the history's length."""
    history = targets.history
    users = np.asarray(history.user_ids, np.int64) - 1
    if users.min(initial=0) < 0 or users.max(initial=-1) >= sim.spec.users:
        raise DataError(f"{sim.spec}: eval users are not the generator's users")
    rows = sim.offsets[users] + history.lengths
    if np.any(rows >= sim.offsets[users + 1]):
        raise DataError(f"{sim.spec}: an eval target lies past its user's last generated event")
    generated = sim.item[rows] + 1
    evaluated = np.asarray(history.item_ids, np.int64)[np.asarray(targets.targets) - 1]
    if not np.array_equal(generated, evaluated):
        user = int(np.flatnonzero(generated != evaluated)[0])
        raise DataError(f"{sim.spec}: user {history.user_ids[user]}'s eval target is item {evaluated[user]}, "
                        f"the generator's event there is item {generated[user]}: the floor would be of other events")
    return rows


def _posterior_topics(sim: synthetic.Simulation, rows: np.ndarray, window: int) -> np.ndarray:
    """(targets, topics) the posterior-predictive topic probabilities given each target's window."""
    world, spec = sim.world, sim.spec
    topics = spec.topics
    alpha = spec.concentration * topics * np.bincount(world.topic, weights=world.popularity, minlength=topics)
    seen = np.minimum(sim.position[rows], window)
    counts = np.zeros((len(rows), topics))
    for lag in range(1, int(seen.max(initial=0)) + 1):
        has = np.flatnonzero(seen >= lag)
        np.add.at(counts, (has, world.topic[sim.item[rows[has] - lag]]), 1.0)
    return (alpha + counts) / (alpha.sum() + seen)[:, None]


def _topic_mixture_losses(sim: synthetic.Simulation, rows: np.ndarray, mixture: np.ndarray,
                          present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per target, -log p(x_t) and the entropy of p(i) = mixture[k(i)] q_i over the present items."""
    world, topics = sim.world, sim.spec.topics
    q = np.where(present, world.within_topic, 0.0)
    mass = np.bincount(world.topic, weights=q, minlength=topics)  # Q_k: present mass of topic k
    q_log_q = np.bincount(world.topic, weights=q * np.log(np.where(q > 0, q, 1.0)), minlength=topics)
    normaliser = mixture @ mass
    target = sim.item[rows]
    losses = -np.log(mixture[np.arange(len(rows)), world.topic[target]] * world.within_topic[target] / normaliser)
    share = mixture / normaliser[:, None]  # p(i) = share[k(i)] q_i
    log_share = np.log(np.where(share > 0, share, 1.0))
    entropies = -(share * (q_log_q + mass * log_share)).sum(axis=1)
    return losses, entropies


def _named(name: str, losses: np.ndarray, entropies: np.ndarray) -> dict[str, float]:
    stderr = float(losses.std(ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else 0.0
    return {f"floor_{name}": float(losses.mean()), f"floor_{name}_stderr": stderr,
            f"floor_{name}_expected": float(entropies.mean())}
