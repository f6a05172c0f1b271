"""Constrained beam search: the trie's tables against a Python trie, cached decoding against the
whole decoder, exhaustive beams against the exact scorer, and no invalid ID when constrained."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.core.config import ModelConfig
from models.encdec.id_trie import build_trie, item_of, next_codes
from models.encdec.model import EncDecModel, vocabulary_codes
from models.encdec.network import EncDecNetwork

K, LEVELS = 4, 2  # IDs of T = 3 codes: 64 possible, 20 of them items
NUM_ITEMS = 20
USERS = 3


def catalogue(seed: int, num_items: int = NUM_ITEMS) -> np.ndarray:
    """(num_items, 3) distinct codes in [0, 4): half of them share the first code 0 (a prefix of
    many items), and one item alone under first code 3 (a prefix of one)."""
    rng = np.random.default_rng(seed)
    crowded = [(0, b, c) for b in range(K) for c in range(K)]
    others = [(a, b, c) for a in (1, 2) for b in range(K) for c in range(K)]
    picked = [crowded[i] for i in rng.permutation(len(crowded))[: num_items // 2]]
    picked += [others[i] for i in rng.permutation(len(others))[: num_items - num_items // 2 - 1]]
    picked.append((3, int(rng.integers(K)), int(rng.integers(K))))
    return np.array(picked, np.int64)[rng.permutation(num_items)]


def python_trie(codes: np.ndarray) -> dict[tuple, dict[int, int]]:
    """prefix -> {next code: item id (last level) or 0}."""
    trie: dict[tuple, dict[int, int]] = {}
    for item, row in enumerate(codes, start=1):
        for j in range(len(row)):
            trie.setdefault(tuple(row[:j]), {})[int(row[j])] = item if j == len(row) - 1 else 0
    return trie


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trie_tables_hold_exactly_the_python_tries_edges(seed: int) -> None:
    codes = catalogue(seed)
    trie, reference = build_trie(codes, K), python_trie(codes)
    prefixes = [()]  # walk level by level with the node ids the tables give
    nodes = [0]
    lookup_level = jax.jit(next_codes, static_argnums=1)
    for level in range(codes.shape[1]):
        allowed, leads_to = (np.asarray(a) for a in lookup_level(trie, level, jnp.asarray(nodes + [-1])))
        assert not allowed[-1].any() and (leads_to[-1] == -1).all()  # off the trie: nothing
        next_prefixes, next_nodes = [], []
        for i, prefix in enumerate(prefixes):
            expected = reference[prefix]
            assert set(np.flatnonzero(allowed[i])) == set(expected)
            for code in expected:
                if level == codes.shape[1] - 1:
                    assert leads_to[i, code] == expected[code]
                else:
                    next_prefixes.append(prefix + (code,))
                    next_nodes.append(int(leads_to[i, code]))
            assert (leads_to[i][~allowed[i]] == -1).all()
        prefixes, nodes = next_prefixes, next_nodes
    everything = np.array([(a, b, c) for a in range(K) for b in range(K) for c in range(K)])
    found = np.asarray(jax.jit(item_of)(trie, jnp.asarray(everything)))
    lookup = {tuple(row): i for i, row in enumerate(codes, start=1)}
    assert found.tolist() == [lookup.get(tuple(row), 0) for row in everything]


def test_trie_refuses_duplicate_ids_and_codes_out_of_range() -> None:
    with pytest.raises(ValueError, match="not distinct"):
        build_trie(np.array([[0, 1], [0, 1]]), 2)
    with pytest.raises(ValueError, match="must lie in"):
        build_trie(np.array([[0, 2]]), 2)


# ---- the model -----------------------------------------------------------------------------------


def tiny(positions: str, codes: np.ndarray) -> tuple[EncDecModel, dict]:
    config = ModelConfig(family="encdec", d_model=8, heads=2, d_ff=16, encoder_blocks=1, decoder_blocks=2,
                         dropout=0.0, history_items=3, user_buckets=5, ids_levels=LEVELS, ids_codebook=K,
                         relative_buckets=8, relative_max_distance=16, score_chunk=7, positions=positions,
                         norm="layernorm" if positions == "learned" else "rmsnorm")
    model = EncDecModel(EncDecNetwork(config), config, len(codes), vocabulary_codes(codes, config), {})
    params = nn.meta.unbox(model.init(jax.random.key(1), {}))
    # sharpen the logits so that beams are decided by the model, not by near ties
    params = jax.tree.map(lambda x: x * 3.0, params)
    return model, params


def memory_of(model: EncDecModel, params: dict, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    history = rng.integers(0, model.num_items + 1, (USERS, model.config.history_items))
    history[0, 0] = 0  # a padded history slot
    user = jnp.asarray(model.config.vocab_size - 1 - np.arange(USERS), jnp.int32)

    @jax.jit
    def encode(params, history):
        tokens = model.encoder_tokens(history, user)
        return model.network.apply({"params": params}, tokens, True, method=EncDecNetwork.encode), tokens != 0

    return encode(params, jnp.asarray(history, jnp.int32))


@pytest.fixture(scope="module", params=["relative", "learned"])
def setup(request):
    codes = catalogue(0)
    model, params = tiny(request.param, codes)
    memory, real = memory_of(model, params)
    exact = np.asarray(jax.jit(model.item_log_likelihoods)(params, memory, real))  # (B, n)
    return model, params, memory, real, exact


@pytest.mark.slow
def test_cached_decoding_equals_the_whole_decoder_at_every_step(setup) -> None:
    model, params, memory, real, _ = setup
    cfg = model.config
    rng = np.random.default_rng(3)
    beams = 5
    local = rng.integers(0, K, (USERS, beams, cfg.id_length))
    ids = 2 + local + np.arange(cfg.id_length) * K
    inputs = jnp.asarray(np.concatenate([np.ones((USERS, beams, 1), np.int64), ids[..., :-1]], -1), jnp.int32)

    @jax.jit
    def both(params, inputs, memory, real):
        outputs = model.network.apply({"params": params}, inputs, memory, real, True, method=EncDecNetwork.decode)
        whole = model.network.apply({"params": params}, outputs, method=EncDecNetwork.level_logits)
        memory_kv = model.network.apply({"params": params}, memory, method=EncDecNetwork.memory_keys_values)
        shape = (USERS, beams, cfg.heads, cfg.id_length, cfg.attention_head_dim)
        caches = tuple((jnp.zeros(shape), jnp.zeros(shape)) for _ in range(cfg.decoder_blocks))
        stepped = []
        for position in range(cfg.id_length):  # the cache holds only what earlier steps wrote
            logits, caches = model.network.apply({"params": params}, inputs[:, :, position], position, caches,
                                                 memory_kv, real, method=EncDecNetwork.decode_step)
            stepped.append(logits)
        return whole, jnp.stack(stepped, axis=2)

    whole, stepped = both(params, inputs, memory, real)
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(whole), rtol=1e-5, atol=1e-5)


def _exact_order(exact: np.ndarray, excluded: np.ndarray) -> list[list[int]]:
    scores = np.where(excluded[:, 1:], -np.inf, exact)
    return [[int(i) + 1 for i in np.argsort(-row, kind="stable") if np.isfinite(row[i])] for row in scores]


def _excluded(num_items: int) -> np.ndarray:
    excluded = np.zeros((USERS, num_items + 1), bool)
    excluded[:, 0] = True
    excluded[0, [2, 7]] = True  # user 0 has seen items 2 and 7
    return excluded


@pytest.mark.slow
@pytest.mark.parametrize("constrained", [True, False])
def test_exhaustive_beams_give_the_exact_ranking(setup, constrained: bool) -> None:
    """A beam as wide as every candidate at every level (the catalogue when constrained, all K^T
    IDs when not) is exhaustive: its valid beams are the exact scorer's ranking, same scores."""
    model, params, memory, real, exact = setup
    width = NUM_ITEMS if constrained else K ** model.config.id_length
    excluded = _excluded(NUM_ITEMS)
    found = jax.jit(model.beam_search, static_argnums=(3, 4))(params, memory, real, width, constrained,
                                                               jnp.asarray(excluded))
    items, scores = np.asarray(found["items"]), np.asarray(found["scores"])
    for row, order in enumerate(_exact_order(exact, excluded)):
        kept = items[row] > 0
        assert items[row][kept].tolist() == order
        np.testing.assert_allclose(scores[row][kept], exact[row, items[row][kept] - 1], rtol=1e-5)
        if constrained:
            assert not np.asarray(found["off_trie"])[row].any()
        else:  # every one of the K^T IDs was a beam: the rest are no item's
            assert np.asarray(found["off_trie"])[row].sum() == width - NUM_ITEMS  # excluded IDs finish nowhere


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_constrained_beams_are_always_items_with_their_codes(seed: int) -> None:
    codes = catalogue(seed)
    model, params = tiny("relative", codes)
    params = jax.tree.map(lambda x, k: x + jax.random.normal(k, x.shape) * 0.5, params,
                          jax.tree.unflatten(jax.tree.structure(params),
                                             list(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params))))))
    memory, real = memory_of(model, params, seed)
    search = jax.jit(model.beam_search, static_argnums=(3, 4))
    for constrained in (True, False):
        found = search(params, memory, real, 6, constrained)
        items, got_codes = np.asarray(found["items"]), np.asarray(found["codes"])
        off = np.asarray(found["off_trie"])
        assert ((items > 0) | off).all()
        assert (codes[items[items > 0] - 1] == got_codes[items > 0]).all()
        if constrained:
            assert not off.any() and (items > 0).all()


@pytest.mark.slow
def test_padding_rows_and_spare_beams_change_nothing() -> None:
    model, params = tiny("relative", catalogue(0))
    memory, real = memory_of(model, params)
    search = jax.jit(model.beam_search, static_argnums=(3, 4, 6))
    alone = search(params, memory[:1], real[:1], 6, True, None)
    padded = search(params, jnp.concatenate([memory[:1], jnp.zeros_like(memory[:2])]),
                    jnp.concatenate([real[:1], jnp.zeros_like(real[:2])]), 6, True, None)
    for key in ("items", "codes"):
        assert (np.asarray(alone[key]) == np.asarray(padded[key])[:1]).all()
    np.testing.assert_allclose(np.asarray(alone["scores"]), np.asarray(padded["scores"])[:1], rtol=1e-6)
    # 2 beams asked for 5 items: the last position's 5 best continuations, the 2-item list first
    more = search(params, memory, real, 2, True, None, 5)
    fewer = search(params, memory, real, 2, True, None)
    more_items = np.asarray(more["items"])
    assert more_items.shape == (USERS, 5) and ((more_items > 0).sum(axis=1) > 2).all()
    assert (np.isfinite(np.asarray(more["scores"])) == (more_items > 0)).all()  # 2 prefixes may hold < 5 items
    assert (np.asarray(more["items"])[:, :2] == np.asarray(fewer["items"])).all()
    # a catalogue of 5 items searched with 8 beams: the 5 items, best first, then 3 empty beams
    few = catalogue(0)[:5]
    small, small_params = tiny("relative", few)
    memory5, real5 = memory_of(small, small_params)
    wide = jax.jit(small.beam_search, static_argnums=(3, 4))(small_params, memory5, real5, 8, True)
    exact = np.asarray(jax.jit(small.item_log_likelihoods)(small_params, memory5, real5))
    assert (np.asarray(wide["items"])[:, 5:] == 0).all() and np.isneginf(np.asarray(wide["scores"])[:, 5:]).all()
    assert np.asarray(wide["items"])[:, :5].tolist() == (np.argsort(-exact, axis=1, kind="stable") + 1).tolist()


@pytest.mark.slow(10)
def test_history_items_are_ranked_and_decoded_only_when_the_protocol_keeps_them() -> None:
    """The exact scorer gives both ranks (history excluded: the lab's rule; kept: the papers');
    the beam (exhaustive here: 20 beams over 20 items) leaves the history out only when
    train.exclude_history says so, and otherwise returns the exact scorer's order of every item."""
    import dataclasses

    model, params = tiny("relative", catalogue(0))
    keeps = dataclasses.replace(model, exclude_history=False)
    items = np.array([[3, 5, 9, 0], [4, 12, 0, 0], [7, 7, 15, 11]], np.int32)
    batch = {"items": items, "segment_ids": (items > 0).astype(np.int32),
             "eval_position": np.array([2, 1, 3], np.int32),
             "user_tokens": np.full(items.shape, model.config.vocab_size - 1, np.int32),
             "eval_target": np.array([5, 20, 1], np.int32), "eval_valid": np.ones(3, bool)}
    batch = {key: jnp.asarray(value) for key, value in batch.items()}
    out = jax.jit(model.evaluate)(params, batch)
    memory, real = jax.jit(model.encode_users)(params, batch)
    exact = np.asarray(jax.jit(model.item_log_likelihoods)(params, memory, real))  # (3, 20): items 1..20
    for row in range(3):
        target = int(batch["eval_target"][row])
        above = exact[row] > exact[row, target - 1]
        seen = np.isin(np.arange(1, NUM_ITEMS + 1), items[row][items[row] != target])
        assert int(out["rank"][row]) == 1 + np.sum(above & ~seen)
        assert int(out["rank_with_history"][row]) == 1 + np.sum(above)
    assert (np.asarray(out["rank_with_history"]) > np.asarray(out["rank"])).any()
    excluded_top = np.asarray(jax.jit(model.top_items, static_argnums=2)(params, batch, 5)["items"])
    kept_top = np.asarray(jax.jit(keeps.top_items, static_argnums=2)(params, batch, 5)["items"])
    for row in range(3):
        order = np.argsort(-exact[row], kind="stable") + 1
        assert kept_top[row].tolist() == order[:5].tolist()
        assert excluded_top[row].tolist() == [i for i in order if i not in items[row]][:5]
    assert any(np.isin(kept_top[row], items[row][items[row] > 0]).any() for row in range(3))
    # the beam alone (model.exact_scorer=false): its lists are the ranking, the target never excluded
    beam_only = dataclasses.replace(model, config=dataclasses.replace(model.config, exact_scorer=False))
    lists = np.asarray(jax.jit(beam_only.evaluate)(params, batch)["top_k"])
    for row in range(3):
        seen = [i for i in items[row] if i != batch["eval_target"][row]]
        assert lists[row].tolist() == [i for i in np.argsort(-exact[row], kind="stable") + 1 if i not in seen][:10]
