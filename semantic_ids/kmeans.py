"""k-means in JAX, jitted and deterministic given a key: greedy k-means++ seeding, full-batch or
mini-batch Lloyd, and a balanced assignment that caps every cluster at ceil(n / K).

Points are rows of x (n, d) with weights w (n,) in {0, 1}: weight 0 marks padding (added after the
real rows so that n divides over the devices of a mesh), which is never sampled, counted or
assigned, and which changes no random draw. Every function
is shape-polymorphic in nothing: n, d and K are static, so one compiled program serves every
level of a residual quantiser. With x sharded by rows over a mesh, the distance matrices, argmins
and centre sums are computed where the rows live and XLA adds the reductions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

UNASSIGNED = -1
LLOYD_KINDS = ("full", "minibatch")


@dataclasses.dataclass(frozen=True)
class KMeansOptions:
    """How one k-means fit runs.

    n_init: restarts (k-means++ then Lloyd), the one with the lowest inertia kept. max_iters:
    Lloyd iterations at most (mini-batch: batches). tol: stop when the squared centre shift falls
    below tol x the data's mean variance (sklearn's rule). sample_per_centre: the centres are fitted
    on at most K x this many points drawn without replacement (faiss's rule; the assignment then
    covers every point). balanced_iters: balanced Lloyd rounds on all points after the fit (capped
    assignment, centre = mean of its capped cluster), only when balanced.
    """

    n_init: int = 3
    max_iters: int = 50
    tol: float = 1e-4
    lloyd: str = "full"
    minibatch_size: int = 4096
    sample_per_centre: int = 256
    balanced: bool = False
    balanced_iters: int = 3

    def __post_init__(self) -> None:
        if self.lloyd not in LLOYD_KINDS:
            raise ValueError(f"lloyd={self.lloyd!r}: expected one of {', '.join(LLOYD_KINDS)}")
        for name in ("n_init", "max_iters", "minibatch_size", "sample_per_centre"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.balanced_iters < 0 or not self.tol >= 0:
            raise ValueError("balanced_iters and tol must be non-negative")


class KMeansFit(NamedTuple):
    centres: jax.Array  # (K, d)
    assignment: jax.Array  # (n,) int32 in [0, K), UNASSIGNED for padding
    inertia: jax.Array  # () sum of squared distances of the points to their centres


def seeding_trials(k: int) -> int:
    """Candidates per centre of greedy k-means++ (Arthur & Vassilvitskii; sklearn's choice)."""
    return 2 + int(math.log(k))


def squared_distances(x: jax.Array, centres: jax.Array) -> jax.Array:
    """(n, K) squared Euclidean distances, clamped at 0 against cancellation."""
    cross = jnp.einsum("nd,kd->nk", x, centres, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(jnp.sum(x * x, 1)[:, None] - 2.0 * cross + jnp.sum(centres * centres, 1)[None, :], 0.0)


def nearest(x: jax.Array, centres: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(index of the nearest centre, squared distance to it) per point."""
    d2 = squared_distances(x, centres)
    return jnp.argmin(d2, 1).astype(jnp.int32), jnp.min(d2, 1)


def draw(key: jax.Array, logits: jax.Array, count: int) -> jax.Array:
    """`count` independent draws of a row index with probability softmax(logits), by Gumbel-max
    with one (key, j) stream per draw over the rows: appending rows of logit -inf (padding to fit a
    mesh) leaves every draw unchanged, so the result does not depend on the device count."""
    keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(count))
    return jax.vmap(lambda k: jnp.argmax(logits + jax.random.gumbel(k, logits.shape, logits.dtype)))(keys)


def kmeans_plus_plus(x: jax.Array, w: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """Greedy k-means++ seeding: each centre is the best of seeding_trials(k) candidates drawn with
    probability proportional to the squared distance to the centres so far."""
    trials = seeding_trials(k)
    log_w = jnp.log(w)
    key, first_key = jax.random.split(key)
    first = draw(first_key, log_w, 1)[0]
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    closest = squared_distances(x, x[first][None])[:, 0] * w

    def add_centre(i: int, carry: tuple) -> tuple:
        centres, closest, key = carry
        key, sub = jax.random.split(key)
        # When every point already sits on a centre (fewer distinct points than K), draw uniformly.
        logits = jnp.where(jnp.sum(closest) > 0, jnp.log(closest), log_w)
        candidates = draw(sub, logits, trials)
        to_candidates = squared_distances(x, x[candidates])
        potential = jnp.sum(w[:, None] * jnp.minimum(closest[:, None], to_candidates), 0)
        best = jnp.argmin(potential)
        centres = centres.at[i].set(x[candidates[best]])
        return centres, jnp.minimum(closest, to_candidates[:, best] * w), key

    centres, _, _ = jax.lax.fori_loop(1, k, add_centre, (centres, closest, key))
    return centres


def _centre_means(x: jax.Array, w: jax.Array, assignment: jax.Array, centres: jax.Array,
                  to_centre: jax.Array) -> jax.Array:
    """Weighted means of the clusters; an empty cluster restarts at one of the points farthest
    from their centres (the i-th empty cluster at the i-th farthest point)."""
    k = centres.shape[0]
    segment = jnp.where(w > 0, assignment, k)  # padding goes to a dropped extra segment
    sums = jax.ops.segment_sum(x * w[:, None], segment, k + 1)[:k]
    counts = jax.ops.segment_sum(w, segment, k + 1)[:k]
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    empty = counts == 0
    _, farthest = jax.lax.top_k(jnp.where(w > 0, to_centre, -1.0), k)
    empty_rank = jnp.cumsum(empty) - 1
    return jnp.where(empty[:, None], x[farthest[jnp.clip(empty_rank, 0, k - 1)]], means)


def _mean_variance(x: jax.Array, w: jax.Array) -> jax.Array:
    count = jnp.sum(w)
    mean = jnp.sum(x * w[:, None], 0) / count
    return jnp.sum(w[:, None] * (x - mean) ** 2) / (count * x.shape[1])


def lloyd(x: jax.Array, w: jax.Array, centres: jax.Array, max_iters: int, tol: float) -> jax.Array:
    """Full-batch Lloyd iterations until the squared centre shift is below tol x mean variance."""
    threshold = tol * _mean_variance(x, w)

    def step(carry: tuple) -> tuple:
        i, centres, _ = carry
        assignment, to_centre = nearest(x, centres)
        new = _centre_means(x, w, assignment, centres, to_centre)
        return i + 1, new, jnp.sum((new - centres) ** 2)

    def going(carry: tuple) -> jax.Array:
        i, _, shift = carry
        return (i < max_iters) & (shift > threshold)

    _, centres, _ = jax.lax.while_loop(going, step, (0, centres, jnp.inf))
    return centres


def minibatch_lloyd(x: jax.Array, w: jax.Array, centres: jax.Array, steps: int, batch: int,
                    key: jax.Array) -> jax.Array:
    """Mini-batch k-means (Sculley 2010): each centre moves towards its batch mean with a step of
    (its points in this batch) / (its points in all batches so far)."""
    k = centres.shape[0]
    real_rows = jnp.sum(w > 0)  # padding only ever follows the real rows

    def step(i: int, carry: tuple) -> tuple:
        centres, seen = carry
        rows = jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, real_rows)
        xb = x[rows]
        assignment, _ = nearest(xb, centres)
        sums = jax.ops.segment_sum(xb, assignment, k)
        counts = jax.ops.segment_sum(jnp.ones(batch, x.dtype), assignment, k)
        seen = seen + counts
        centres = centres + (sums - counts[:, None] * centres) / jnp.maximum(seen, 1.0)[:, None]
        return centres, seen

    centres, _ = jax.lax.fori_loop(0, steps, step, (centres, jnp.zeros(k, x.dtype)))
    return centres


def capped_assignment(d2: jax.Array, w: jax.Array, cap: int | jax.Array) -> jax.Array:
    """Assign every weighted point to a centre so that no centre holds more than `cap` points.

    Rounds of proposals: every unassigned point proposes to its nearest centre that is not full;
    each centre accepts its closest proposers (ties by point index) up to its remaining room; a
    centre that reached `cap` is closed to later rounds. Every round closes a centre or assigns
    every proposer, so at most K + 1 rounds run; K x cap >= n guarantees that everyone is placed.
    """
    n, k = d2.shape
    index = jnp.arange(n, dtype=jnp.int32)

    def propose(carry: tuple) -> tuple:
        assignment, counts = carry
        open_d2 = jnp.where((counts >= cap)[None, :], jnp.inf, d2)
        choice = jnp.argmin(open_d2, 1).astype(jnp.int32)
        distance = jnp.min(open_d2, 1)
        proposing = assignment == UNASSIGNED
        centre_key = jnp.where(proposing, choice, k)  # non-proposers sort after every centre
        sorted_centre, _, sorted_index = jax.lax.sort((centre_key, distance, index), num_keys=3)
        first_of_centre = jax.ops.segment_min(index, sorted_centre, k + 1)
        rank = index - first_of_centre[sorted_centre]
        room = jnp.concatenate([cap - counts, jnp.zeros(1, counts.dtype)])
        accepted_sorted = (sorted_centre < k) & (rank < room[sorted_centre])
        accepted = jnp.zeros(n, bool).at[sorted_index].set(accepted_sorted)
        assignment = jnp.where(accepted, choice, assignment)
        counts = counts + jax.ops.segment_sum(accepted.astype(counts.dtype), jnp.where(accepted, choice, k), k + 1)[:k]
        return assignment, counts

    def unplaced(carry: tuple) -> jax.Array:
        return jnp.any(carry[0] == UNASSIGNED)

    start = jnp.where(w > 0, UNASSIGNED, k).astype(jnp.int32)  # padding: placed nowhere
    assignment, _ = jax.lax.while_loop(unplaced, propose, (start, jnp.zeros(k, jnp.int32)))
    return jnp.where(w > 0, assignment, UNASSIGNED)


def balanced_cap(points: int | jax.Array, k: int) -> int | jax.Array:
    """ceil(points / k): the most points a balanced cluster may hold."""
    return -(-points // k)


def _fit_restart(xs: jax.Array, ws: jax.Array, k: int, key: jax.Array, options: KMeansOptions) -> tuple:
    seed_key, batch_key = jax.random.split(key)
    centres = kmeans_plus_plus(xs, ws, k, seed_key)
    if options.lloyd == "full":
        centres = lloyd(xs, ws, centres, options.max_iters, options.tol)
    else:
        centres = minibatch_lloyd(xs, ws, centres, options.max_iters, options.minibatch_size, batch_key)
    _, to_centre = nearest(xs, centres)
    return centres, jnp.sum(ws * to_centre)


@functools.partial(jax.jit, static_argnames=("k", "options", "rows"))
def fit(x: jax.Array, w: jax.Array, k: int, key: jax.Array, options: KMeansOptions, rows: int | None = None) -> KMeansFit:
    """K centres for the weighted points x and every point's assignment (capped when balanced).
    rows: how many of x's rows are real (the rest padding); it decides whether to fit on a sample,
    so that the choice does not depend on how much padding a mesh needed."""
    n = x.shape[0]
    sample = min(n if rows is None else rows, k * options.sample_per_centre)
    sample_key, restart_key = jax.random.split(key)
    if sample < (n if rows is None else rows):
        # Without replacement, by Gumbel top-k (unchanged by trailing padding, as in draw).
        _, picked = jax.lax.top_k(jnp.log(w) + jax.random.gumbel(sample_key, (n,)), sample)
        xs, ws = x[picked], w[picked]
    else:
        xs, ws = x, w
    restart_keys = jax.random.split(restart_key, options.n_init)
    centres, inertias = jax.lax.map(lambda r: _fit_restart(xs, ws, k, r, options), restart_keys)
    centres = centres[jnp.argmin(inertias)]
    if not options.balanced:
        assignment, to_centre = nearest(x, centres)
        return KMeansFit(centres, jnp.where(w > 0, assignment, UNASSIGNED), jnp.sum(w * to_centre))
    cap = balanced_cap(jnp.sum(w > 0).astype(jnp.int32), k)  # padding does not count

    def balanced_round(_: int, centres: jax.Array) -> jax.Array:
        assignment = capped_assignment(squared_distances(x, centres), w, cap)
        to_centre = jnp.sum((x - centres[jnp.maximum(assignment, 0)]) ** 2, 1)
        return _centre_means(x, w, assignment, centres, to_centre)

    centres = jax.lax.fori_loop(0, options.balanced_iters, balanced_round, centres)
    d2 = squared_distances(x, centres)
    assignment = capped_assignment(d2, w, cap)
    to_centre = jnp.take_along_axis(d2, jnp.maximum(assignment, 0)[:, None], 1)[:, 0]
    return KMeansFit(centres, assignment, jnp.sum(w * to_centre))
