"""Beam search over the T = L + 1 code positions of a semantic ID, batch x beam in one program.

The model is a step function: (previous codes (B, W) -- -1 before the first -- position, cache)
-> ((B, W, K) next-level logits, cache), its cache a pytree whose leaves lead with (B, W). The T
positions are unrolled (T is small and each level's trie gather has its own static width).

Constrained: at every position only codes that continue the prefix of some item (the trie's
edges) are candidates, so every finished beam is an item. Unconstrained: any of the K codes; a
beam that leaves the trie finishes as "no item" (id 0). Either way the last position never
completes an item of `excluded` (a user's history), the rule the exact scorer follows.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from models.encdec.id_trie import IdTrie, next_codes

StepFn = Callable[[jax.Array, int, Any], tuple[jax.Array, Any]]


def beam_search(step: StepFn, cache: Any, trie: IdTrie, width: int, batch: int, constrained: bool = True,
                excluded: jax.Array | None = None, returned: int | None = None) -> dict[str, jax.Array]:
    """The best N = max(width, returned) IDs per row, best first: `width` beams through the first
    T - 1 positions, the last position's N best continuations of them (so 5 beams can return a
    top 10). excluded: (B, num_items + 1) bool or None.

    Returns codes (B, N, T), items (B, N) (0: no item, or a beam with no finite score), scores
    (B, N) (sum of the codes' log-probabilities; -inf for beams that found nothing) and
    off_trie (B, N) bool (a finite-score beam whose ID is no item's; always False constrained)."""
    length, k = trie.levels, trie.codebook
    scores = jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf)[None].repeat(batch, 0)  # one live beam
    node = jnp.zeros((batch, width), jnp.int32)
    codes = jnp.zeros((batch, width, length), jnp.int32)
    previous = jnp.full((batch, width), -1, jnp.int32)
    rows = jnp.arange(batch)[:, None, None]
    for position in range(length):
        logits, cache = step(previous, position, cache)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        allowed, leads_to = next_codes(trie, position, node)
        candidate = allowed if constrained else jnp.ones_like(allowed)
        if excluded is not None and position == length - 1:
            candidate &= ~((leads_to > 0) & excluded[rows, jnp.maximum(leads_to, 0)])
        totals = jnp.where(candidate, scores[..., None] + log_probs, -jnp.inf).reshape(batch, width * k)
        last = position == length - 1
        scores, flat = jax.lax.top_k(totals, min(max(width, returned or 0), width * k) if last else width)
        parent, code = flat // k, flat % k
        node = jnp.take_along_axis(leads_to.reshape(batch, width * k), flat, axis=1)
        codes = jnp.take_along_axis(codes, parent[..., None], axis=1).at[:, :, position].set(code)
        if not last:
            cache = jax.tree.map(lambda leaf: _reorder(leaf, parent), cache)
        previous = code
    found = jnp.isfinite(scores)
    return {"codes": codes, "items": jnp.where(found, jnp.maximum(node, 0), 0), "scores": scores,
            "off_trie": found & (node < 0)}


def _reorder(leaf: jax.Array, parent: jax.Array) -> jax.Array:
    """leaf (B, W, ...) with each row's beams taken from `parent` (B, W)."""
    index = parent.reshape(*parent.shape, *([1] * (leaf.ndim - 2)))
    return jnp.take_along_axis(leaf, index, axis=1)
