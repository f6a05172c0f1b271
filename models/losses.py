"""Next-item losses over L2-normalised outputs and candidates (cosine / temperature logits).

Both return (sum of per-position losses, number of supervised positions), so means are taken
on the host after summing over devices and accumulation steps; positions with target 0 (no
next item, padding) carry no loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models.layers import l2_normalize

ACCIDENTAL_HIT_LOGIT = -5e4  # the reference's logit for a sampled negative equal to the positive


def sample_negatives(keys: jax.Array, shape: tuple[int, ...], num_negatives: int, num_items: int) -> jax.Array:
    """Item ids drawn uniformly from 1..num_items with replacement: (B, *shape[1:], num_negatives),
    row b's from keys[b] (models.layers.row_keys), so a row draws the same however the batch is split."""
    draw = lambda key: jax.random.randint(key, (*shape[1:], num_negatives), 1, num_items + 1, dtype=jnp.int32)
    return jax.vmap(draw)(keys)


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
    candidates: jax.Array,
    negatives: jax.Array,
    temperature: float,
    score_all_items: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """-log softmax of the positive among [positive, negatives], summed over supervised positions.

    outputs: (B, L, D) unit vectors; targets: (B, L), 0 = no loss; candidates: the raw item table
    (rows, D), row 0 padding, L2-normalised here where used; negatives: (B, L, R).
    score_all_items: compute the (B, L, rows) score matrix and pick the sampled columns, or gather
    the (B, L, R, D) sampled embeddings (normalised after the gather when the table has more rows,
    so the step's work does not grow with the catalogue); None decides by size
    (scores_all_items). Both ways compute the same numbers.
    """
    if score_all_items is None:
        score_all_items = scores_all_items(candidates.shape[0], negatives.shape[-1])
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
        if candidates.shape[0] <= targets.size + negatives.size:  # normalise whichever is smaller
            normalised = l2_normalize(candidates).astype(jnp.float32)
            rows = lambda ids: jnp.take(normalised, ids, axis=0, mode="clip")
        else:
            rows = lambda ids: l2_normalize(jnp.take(candidates, ids, axis=0, mode="clip")).astype(jnp.float32)
        positive = jnp.einsum("bld,bld->bl", outputs, rows(targets))[..., None]
        sampled = jnp.einsum("bld,blrd->blr", outputs, rows(negatives))
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
