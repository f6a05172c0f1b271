"""The trie of valid semantic IDs flattened into per-level CSR tables (as Google's STATIC does,
arXiv 2602.22647), so that a beam's allowed next codes are one gather of its node's edge window.

An ID is (c_0, .., c_{T-1}), T = L + 1 codes in [0, K). Level j's nodes are the distinct
prefixes of length j (level 0: the root alone), numbered in lexicographic order. Level j's edges,
sorted by (node, code), are the tables
  offsets[j]  (nodes_j + 1,)  node n's edges are offsets[j][n] .. offsets[j][n + 1] - 1
  codes[j]    (edges_j,)      the code of each edge
  children[j] (edges_j,)      the node it leads to at level j + 1; at the last level the item id
and max_degree[j], the most edges any level-j node has, is the (static) width of the gather.
A node id of -1 is "off the trie" (an unconstrained beam that left it): no edges, child -1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class IdTrie:
    """Host (NumPy) tables when built; a pytree, so that jitted code holds them as arrays."""

    offsets: tuple[jax.Array, ...]
    codes: tuple[jax.Array, ...]
    children: tuple[jax.Array, ...]
    max_degree: tuple[int, ...]
    codebook: int

    @property
    def levels(self) -> int:
        return len(self.offsets)

    def tree_flatten(self):
        return (self.offsets, self.codes, self.children), (self.max_degree, self.codebook)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(*leaves, *aux)


jax.tree_util.register_pytree_node(IdTrie, IdTrie.tree_flatten, IdTrie.tree_unflatten)


def build_trie(codes: np.ndarray, codebook: int) -> IdTrie:
    """The trie of item i's ID codes[i - 1] (num_items, T) with per-level codes in [0, K); the
    IDs must be distinct (the collision level makes them so)."""
    codes = np.asarray(codes, np.int64)
    num_items, length = codes.shape
    if codes.min(initial=0) < 0 or codes.max(initial=0) >= codebook:
        raise ValueError(f"codes must lie in [0, {codebook})")
    if len(np.unique(codes, axis=0)) != num_items:
        raise ValueError("the semantic IDs are not distinct")
    order = np.lexsort(codes.T[::-1])  # lexicographic by (c_0, c_1, ..)
    sorted_codes = codes[order]
    # node_of[j][r]: the level-j node of sorted item r (the rank of its length-j prefix)
    node_of = [np.zeros(num_items, np.int64)]
    for j in range(1, length + 1):
        changed = np.any(sorted_codes[1:, :j] != sorted_codes[:-1, :j], axis=1)
        node_of.append(np.concatenate([[0], np.cumsum(changed)]))
    offsets, edge_codes, children, max_degree = [], [], [], []
    for j in range(length):
        first = np.concatenate([[True], node_of[j + 1][1:] != node_of[j + 1][:-1]])  # one row per edge
        parents = node_of[j][first]
        nodes = int(node_of[j][-1]) + 1 if num_items else 1
        degree = np.bincount(parents, minlength=nodes)
        offsets.append(np.concatenate([[0], np.cumsum(degree)]).astype(np.int32))
        edge_codes.append(sorted_codes[first, j].astype(np.int32))
        leaf = j == length - 1
        children.append((order[first] + 1 if leaf else node_of[j + 1][first]).astype(np.int32))
        max_degree.append(int(degree.max(initial=1)))
    return IdTrie(tuple(offsets), tuple(edge_codes), tuple(children), tuple(max_degree), codebook)


def next_codes(trie: IdTrie, level: int, node: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For nodes (...) at `level` (a Python int): (..., K) bool, the codes with an edge, and
    (..., K) int32, the node (or, at the last level, item id) each leads to, -1 where none."""
    offsets, codes, children = (jnp.asarray(t[level]) for t in (trie.offsets, trie.codes, trie.children))
    width = trie.max_degree[level]
    on_trie = node >= 0
    safe = jnp.where(on_trie, node, 0)
    start = offsets[safe]
    degree = jnp.where(on_trie, offsets[safe + 1] - start, 0)
    slot = jnp.arange(width)
    edge = jnp.clip(start[..., None] + slot, 0, codes.shape[0] - 1)  # (..., width): the gather
    present = slot < degree[..., None]
    edge_code = jnp.where(present, codes[edge], trie.codebook)  # absent slots write out of range
    child = jnp.where(present, children[edge], -1)
    lead = node.shape

    def scatter(code_row: jax.Array, child_row: jax.Array) -> tuple[jax.Array, jax.Array]:
        allowed = jnp.zeros(trie.codebook, bool).at[code_row].set(True, mode="drop")
        leads_to = jnp.full(trie.codebook, -1, jnp.int32).at[code_row].set(child_row, mode="drop")
        return allowed, leads_to

    flat_codes, flat_children = edge_code.reshape(-1, width), child.reshape(-1, width)
    allowed, leads_to = jax.vmap(scatter)(flat_codes, flat_children)
    return allowed.reshape(*lead, trie.codebook), leads_to.reshape(*lead, trie.codebook)


def item_of(trie: IdTrie, codes: jax.Array) -> jax.Array:
    """(..., T) codes -> (...) item id, 0 where the ID is no item's (walks the trie, vectorised)."""
    node = jnp.zeros(codes.shape[:-1], jnp.int32)
    for level in range(trie.levels):
        _, leads_to = next_codes(trie, level, node)
        node = jnp.take_along_axis(leads_to, codes[..., level : level + 1], axis=-1)[..., 0]
    return jnp.maximum(node, 0)
