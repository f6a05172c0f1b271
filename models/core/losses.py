"""Next-item losses over L2-normalised outputs and candidates (cosine / temperature logits).

Both return (sum of per-position losses, number of supervised positions), so means are taken
on the host after summing over devices and accumulation steps; positions with target 0 (no
next item, padding) carry no loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models.core.layers import l2_normalize
from models.core.tables import RowSubset, unit_rows

ACCIDENTAL_HIT_LOGIT = -5e4  # the reference's logit for a sampled negative equal to the positive


def sample_negatives(keys: jax.Array, shape: tuple[int, ...], num_negatives: int, num_items: int) -> jax.Array:
    """Item ids drawn uniformly from 1..num_items with replacement: (B, *shape[1:], num_negatives),
    row b's from keys[b] (models.core.layers.row_keys), so a row draws the same however the batch is split."""
    draw = lambda key: jax.random.randint(key, (*shape[1:], num_negatives), 1, num_items + 1, dtype=jnp.int32)
    return jax.vmap(draw)(keys)


def in_batch_negatives(key: jax.Array, targets: jax.Array, count: int) -> dict[str, jax.Array]:
    """The targets of `count` positions drawn uniformly, with replacement, from the supervised
    positions (target > 0) of `targets` (the step's whole batch): items drawn by their in-batch
    frequency. With them, what in_batch_log_q needs: the step's targets in order, and their number."""
    flat = targets.reshape(-1)
    ordered = jnp.sort(jnp.where(flat > 0, flat, jnp.iinfo(jnp.int32).max))
    supervised = jnp.sum(flat > 0)
    picks = jax.random.randint(key, (count,), 0, jnp.maximum(supervised, 1))
    return {"negatives": jnp.where(supervised > 0, ordered[picks], 1).astype(jnp.int32), "ordered_targets": ordered,
            "supervised": supervised}


def in_batch_log_q(drawn: dict[str, jax.Array], items: jax.Array, count: int) -> jax.Array:
    """log of each item's expected number among `count` in-batch draws: count x its share of the
    step's supervised targets (at least one occurrence, for positions with no target)."""
    ordered = drawn["ordered_targets"]
    occurrences = jnp.searchsorted(ordered, items, side="right") - jnp.searchsorted(ordered, items, side="left")
    return jnp.log(count * jnp.maximum(occurrences, 1) / jnp.maximum(drawn["supervised"], 1).astype(jnp.float32))


def scores_all_items(candidate_rows: int, negatives: int) -> bool:
    """Whether the sampled softmax scores every item and picks the sampled columns.

    The dense score matrix costs 2 D V FLOPs per position in one efficient matmul; gathering R
    embeddings per position and scattering their gradients back is memory-bound, measured on
    this CPU about as slow as the matmul at V ~ 30 R. Both ways give the same numbers.
    """
    return candidate_rows <= 32 * negatives


def sampled_softmax_loss(
    outputs: jax.Array,
    targets: jax.Array,
    candidates: jax.Array | RowSubset,
    negatives: jax.Array,
    temperature: float,
    score_all_items: bool | None = None,
    negative_log_q: jax.Array | None = None,
    target_log_q: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """-log softmax of the positive among [positive, negatives], summed over supervised positions.

    outputs: (B, L, D) unit vectors; targets: (B, L), 0 = no loss; candidates: the raw item table
    (rows, D), row 0 padding, or a RowSubset of it holding every target and negative (L2-normalised
    here where used); negatives: (B, L, R) per position, or (R,) shared by every position (one
    (positions x R) matmul). negative_log_q / target_log_q: log of each sampled item's expected
    count in the draw, subtracted from its logit (the logQ correction of a sampler that is not
    uniform; Bengio & Senecal 2008, Yi et al. 2019); None for uniform draws.
    score_all_items (per-position negatives of a whole table): compute the (B, L, rows) score
    matrix and pick the sampled columns, or gather the (B, L, R, D) sampled embeddings (normalised
    after the gather when the table has more rows, so the step's work does not grow with the
    catalogue); None decides by size (scores_all_items). Both ways compute the same numbers.
    """
    shared = negatives.ndim == 1
    if score_all_items is None:
        score_all_items = not shared and not isinstance(candidates, RowSubset) and \
            scores_all_items(candidates.shape[0], negatives.shape[-1])
    outputs = outputs.astype(jnp.float32)
    if score_all_items:
        candidates = l2_normalize(candidates).astype(jnp.float32)
        # One (positions, V + 1) matrix and one gather of [target, negatives] per position: the
        # gather's transpose, a scatter into that matrix, runs fastest in this 2-D form on XLA:CPU.
        positions = targets.size
        columns = jnp.concatenate([targets.reshape(positions, 1), negatives.reshape(positions, -1)], axis=1)
        scores = outputs.reshape(positions, -1) @ candidates.T
        picked = jnp.take_along_axis(scores, columns, axis=1, mode="clip").reshape(*negatives.shape[:-1], -1)
        positive, sampled = picked[..., :1], picked[..., 1:]
    else:
        rows = unit_rows(candidates, targets.size + negatives.size)
        positive = jnp.einsum("bld,bld->bl", outputs, rows(targets))[..., None]
        sampled = jnp.einsum("bld,rd->blr" if shared else "bld,blrd->blr", outputs, rows(negatives))
    if negative_log_q is not None:
        positive = positive - temperature * target_log_q[..., None]
        sampled = sampled - temperature * negative_log_q
    sampled = jnp.where(negatives == targets[..., None], ACCIDENTAL_HIT_LOGIT * temperature, sampled)
    logits = jnp.concatenate([positive, sampled], axis=-1) / temperature
    per_position = jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]
    supervised = targets > 0
    return jnp.sum(jnp.where(supervised, per_position, 0.0)), jnp.sum(supervised).astype(jnp.float32)


def full_softmax_loss(
    outputs: jax.Array, targets: jax.Array, candidates: jax.Array, temperature: float, num_items: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Cross-entropy of the target among all items 1..V (exact; for small catalogues).

    outputs: (..., D) unit vectors; targets: (...), 0 = no loss; candidates: the raw item table
    (rows, D), L2-normalised here; row 0 and rows past num_items (padding) are never a class.
    """
    candidates = l2_normalize(candidates).astype(jnp.float32)
    logits = jnp.einsum("...d,vd->...v", outputs.astype(jnp.float32), candidates) / temperature
    classes = jnp.arange(candidates.shape[0])
    logits = jnp.where((classes == 0) | (classes > (candidates.shape[0] if num_items is None else num_items)),
                       -jnp.inf, logits)
    per_position = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1, mode="clip")[..., 0]
    supervised = targets > 0
    return jnp.sum(jnp.where(supervised, per_position, 0.0)), jnp.sum(supervised).astype(jnp.float32)
