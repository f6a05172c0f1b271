"""The encoder-decoder model over semantic IDs: Training examples: every (history, next item) of a training row (model.targets_per_row = 0, the
TIGER protocol of all prefixes) or that many positions drawn per row per step. Example (row r,
position t): the encoder reads [user token, codes of items[t - H + 1 .. t]] (H = history_items
items of the same segment, older slots padded), bidirectionally; the decoder reads [BOS, c_1 ..
c_L] and predicts c_1 .. c_{L+1} (causal self-attention, cross-attention to the encoder output).
Loss: cross-entropy of each code over its level's K tokens, summed over positions.

Evaluation (the exact scorer): log p(full ID of item i | user) = sum over positions of the code
log-probabilities, teacher-forced, for every item of the catalogue, in chunks of score_chunk
items under jit; the target's rank counts the items scoring strictly higher, history excluded as
HSTU excludes it. Beside it, beam search (models/encdec/beam_search.py, a key/value cache and the trie
of valid IDs, models/encdec/id_trie.py) gives beam_hr@K etc., invalid_rate (constrained as configured),
unconstrained_invalid_rate and beam_exact_agreement (beam top 10 == exact top 10).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from config.fields import ConfigError
from models.core import axes, family
from models.core.family import block_outputs
from models.core.layers import LOSS_SCOPE, row_keys
from models.encdec.beam_search import beam_search
from models.encdec.config import BOS, PAD, SPECIALS, EncDecConfig
from models.encdec.id_trie import IdTrie, build_trie
from models.encdec.network import EncDecNetwork, history_windows, moe_aux

@dataclasses.dataclass(frozen=True, eq=False)
class EncDecModel(family.Model):
    network: EncDecNetwork
    config: EncDecConfig
    num_items: int
    codes: np.ndarray  # (num_items + 1, L + 1) vocabulary ids; row 0 = PAD
    ids_record: dict
    exclude_history: bool = True  # the beam's rule (train.exclude_history); exact ranks give both
    trie: IdTrie = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        local = self.codes[1:] - SPECIALS - np.arange(cfg.id_length) * cfg.ids_codebook
        object.__setattr__(self, "trie", build_trie(local, cfg.ids_codebook))

    def _code_table(self) -> jax.Array:
        return jnp.asarray(self.codes)

    def encoder_tokens(self, history: jax.Array, user: jax.Array) -> jax.Array:
        """[user token, codes of the history items] per example: (..., 1 + H (L + 1))."""
        codes = jnp.take(self._code_table(), history, axis=0)  # (..., H, L + 1)
        return jnp.concatenate([user[..., None], codes.reshape(*history.shape[:-1], -1)], axis=-1)

    def decoder_inputs(self, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
        """([BOS, c_1 .. c_L] ids, (..., L + 1) per-level code indices) of target items."""
        ids = jnp.take(self._code_table(), targets, axis=0)
        inputs = jnp.concatenate([jnp.full((*ids.shape[:-1], 1), BOS, ids.dtype), ids[..., :-1]], axis=-1)
        local = ids - SPECIALS - jnp.arange(self.config.id_length) * self.config.ids_codebook
        return inputs, jnp.clip(local, 0, self.config.ids_codebook - 1)  # padding items (PAD ids) -> 0

    def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Any:
        cfg = self.config
        enc = jnp.zeros((1, cfg.encoder_length), jnp.int32)
        dec = jnp.zeros((1, cfg.id_length), jnp.int32)
        return self.network.init({"params": rng}, enc, dec)["params"]

    def _examples(self, batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, P) positions of the step's examples and their weights (1 where a target exists),
        drawn per row."""
        has_target = batch["targets"] > 0
        per_row = self.config.targets_per_row
        if not per_row or per_row >= has_target.shape[1]:
            positions = jnp.broadcast_to(jnp.arange(has_target.shape[1]), has_target.shape)
            return positions, has_target.astype(jnp.float32)
        noise = jax.vmap(lambda key: jax.random.uniform(key, has_target.shape[1:]))(row_keys(rng, family.row_ids(batch)))
        _, positions = jax.lax.top_k(jnp.where(has_target, noise, -1.0), per_row)
        return positions, jnp.take_along_axis(has_target, positions, axis=1).astype(jnp.float32)

    def _example_tokens(self, batch: Mapping[str, jax.Array], pick_rng: jax.Array) -> dict[str, jax.Array]:
        """The step's (history, next item) examples as encoder and decoder token rows (one per
        example), with each example's id, weight and decoder target codes, and the group size."""
        cfg = self.config
        positions, weight = self._examples(batch, pick_rng)
        history = history_windows(batch["items"], batch["segment_ids"], positions, cfg.history_items)
        user = jnp.take_along_axis(batch["user_tokens"], positions, axis=1)
        target = jnp.take_along_axis(batch["targets"], positions, axis=1)
        rows = positions.shape[0] * positions.shape[1]
        decoder_tokens, local = self.decoder_inputs(target.reshape(rows))
        return {"encoder": self.encoder_tokens(history, user).reshape(rows, -1), "decoder": decoder_tokens,
                "local": local, "weight": weight.reshape(rows), "group": positions.shape[1],
                "ids": (family.row_ids(batch)[:, None] * positions.shape[1] + jnp.arange(positions.shape[1])).reshape(rows)}

    def loss_sums(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        cfg = self.config
        pick_rng, dropout_rng = jax.random.split(rng)
        examples = self._example_tokens(batch, pick_rng)
        local, weight = examples["local"], examples["weight"]
        # a training row's examples are one routing group of a mixture of experts
        logits, state = self.network.apply({"params": params}, examples["encoder"], examples["decoder"],
                                           deterministic=False, group=examples["group"], rows=examples["ids"],
                                           rngs={"dropout": dropout_rng}, mutable=["intermediates"])
        with jax.named_scope(LOSS_SCOPE):
            log_probs = jax.nn.log_softmax(logits, axis=-1)
            nll = -jnp.take_along_axis(log_probs, local[..., None], axis=-1)[..., 0]  # (rows, L + 1)
            loss_sum = jnp.sum(jnp.where(weight[:, None] > 0, nll, 0.0) * weight[:, None])
        return loss_sum, jnp.sum(weight) * cfg.id_length, moe_aux(state.get("intermediates", {}), cfg)

    def coordinates(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Every encoder and decoder block's output on the batch's examples (deterministic)."""
        examples = self._example_tokens(batch, jax.random.key(0))
        return block_outputs(self.network, params, examples["encoder"], examples["decoder"], True, examples["group"])

    def item_log_likelihoods(self, params: Any, memory: jax.Array, memory_real: jax.Array) -> jax.Array:
        """(B, num_items) teacher-forced log p(full ID of item i) for every user row, items 1..n,
        chunk by chunk (score_chunk items at a time)."""
        cfg = self.config
        chunk = min(cfg.score_chunk, self.num_items)
        chunks = -(-self.num_items // chunk)
        items = jnp.arange(1, chunks * chunk + 1).reshape(chunks, chunk)
        items = jnp.where(items <= self.num_items, items, 0)

        def score(chunk_items: jax.Array) -> jax.Array:
            inputs, local = self.decoder_inputs(chunk_items)  # (C, T), (C, T)
            tokens = jnp.broadcast_to(inputs, (memory.shape[0], *inputs.shape))
            outputs = self.network.apply({"params": params}, tokens, memory, memory_real, True,
                                         method=EncDecNetwork.decode)
            log_probs = jax.nn.log_softmax(self.network.apply({"params": params}, outputs,
                                                              method=EncDecNetwork.level_logits), axis=-1)
            picked = jnp.take_along_axis(log_probs, jnp.broadcast_to(local, log_probs.shape[:-1])[..., None], axis=-1)
            return jnp.sum(picked[..., 0], axis=-1)  # (B, C)

        scores = jax.lax.map(score, items)  # (chunks, B, C)
        return jnp.moveaxis(scores, 0, 1).reshape(memory.shape[0], -1)[:, : self.num_items]

    def encode_users(self, params: Any, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(B, S, D) memory of each eval row's user and history, and its (B, S) real-token mask."""
        position = batch["eval_position"][:, None]
        history = history_windows(batch["items"], batch["segment_ids"], position, self.config.history_items)[:, 0]
        user = jnp.take_along_axis(batch["user_tokens"], position, axis=1)[:, 0]
        encoder_tokens = self.encoder_tokens(history, user)
        memory = self.network.apply({"params": params}, encoder_tokens, True, method=EncDecNetwork.encode)
        return memory, encoder_tokens != PAD

    def beam_search(self, params: Any, memory: jax.Array, memory_real: jax.Array, width: int,
                    constrained: bool = True, excluded: jax.Array | None = None,
                    returned: int | None = None) -> dict[str, jax.Array]:
        """Beam search of `width` IDs per memory row with a key/value cache: the cross-attention
        keys and values once per user, each position's self-attention keys and values written into
        (B, W, H, T, E) caches. See models/encdec/beam_search.py for what it returns."""
        cfg = self.config
        batch = memory.shape[0]
        memory_kv = self.network.apply({"params": params}, memory, method=EncDecNetwork.memory_keys_values)
        shape = (batch, width, cfg.heads, cfg.id_length, cfg.attention_head_dim)
        caches = tuple((jnp.zeros(shape, memory.dtype), jnp.zeros(shape, memory.dtype)) for _ in range(cfg.decoder_blocks))
        trie = jax.tree.map(lambda table: nn.with_logical_constraint(jnp.asarray(table), (axes.ID_EDGES,)), self.trie)

        def step(previous: jax.Array, position: int, caches: Any) -> tuple[jax.Array, Any]:
            tokens = jnp.full_like(previous, BOS) if position == 0 else SPECIALS + (position - 1) * cfg.ids_codebook + previous
            return self.network.apply({"params": params}, tokens, position, caches, memory_kv, memory_real,
                                      method=EncDecNetwork.decode_step)

        return beam_search(step, caches, trie, width, batch, constrained, excluded, returned)

    def evaluate(self, params: Any, batch: Mapping[str, jax.Array]) -> dict:
        cfg = self.config
        memory, memory_real = self.encode_users(params, batch)
        if not cfg.exact_scorer:
            return self._beam_only(params, batch, memory, memory_real)
        scores = self.item_log_likelihoods(params, memory, memory_real)  # (B, n): items 1..n
        scores = jnp.concatenate([jnp.full((scores.shape[0], 1), -jnp.inf), scores], axis=1)
        target = batch["eval_target"]
        target_score = jnp.take_along_axis(scores, target[:, None], axis=1)[:, 0]
        rows = jnp.arange(scores.shape[0])[:, None]
        seen = jnp.where(batch["items"] == target[:, None], 0, batch["items"])
        padding = jnp.zeros(scores.shape, bool).at[:, 0].set(True)
        history = padding.at[rows, seen].set(True)
        higher = jnp.sum((scores > target_score[:, None]) & ~history, axis=1)
        higher_with_history = jnp.sum((scores > target_score[:, None]) & ~padding, axis=1)
        out = {"rank": 1 + higher, "rank_with_history": 1 + higher_with_history, "loss": -target_score / cfg.id_length,
               "valid": batch["eval_valid"], "target": target}
        excluded = history if self.exclude_history else padding
        if cfg.beam_width:
            out.update(self._beam_metrics(params, memory, memory_real, jnp.where(excluded, -jnp.inf, scores), excluded))
        return out

    def _beam_only(self, params: Any, batch: Mapping[str, jax.Array], memory: jax.Array,
                   memory_real: jax.Array) -> dict:
        """The beam's top beam_items as the ranking ("top_k": metrics at K up to their number), no
        exact scores: the exact scorer decodes every item for every user (12k items x 22k users
        on Amazon Beauty), the beam beam_width x (L + 1) tokens per user."""
        cfg = self.config
        seen = jnp.where(batch["items"] == batch["eval_target"][:, None], 0, batch["items"])
        excluded = self._not_recommended(seen)
        found = self.beam_search(params, memory, memory_real, cfg.beam_width, cfg.beam_constrained, excluded,
                                 cfg.beam_items)
        returned = found["items"][:, :cfg.beam_items]
        return {"top_k": returned, "target": batch["eval_target"], "valid": batch["eval_valid"],
                "means": {"invalid_rate": jnp.mean(found["off_trie"][:, :cfg.beam_items], axis=1)}}

    def top_items(self, params: Any, batch: Mapping[str, jax.Array], k: int) -> dict[str, jax.Array]:
        """The constrained beam search's k best items (beam_width beams, at least one; history
        excluded unless exclude_history is off), scored by the log-probability of their full ID. A
        row whose beams find fewer than k items pads with item 0 at score -inf."""
        memory, memory_real = self.encode_users(params, batch)
        found = self.beam_search(params, memory, memory_real, max(self.config.beam_width, 1), True,
                                 self._not_recommended(batch["items"]), k)
        return {"items": found["items"][:, :k], "scores": found["scores"][:, :k]}

    def _not_recommended(self, history: jax.Array) -> jax.Array:
        """(B, num_items + 1) items the beam may not return: the padding item, and the rows'
        `history` (0 = none) when exclude_history is on."""
        excluded = jnp.zeros((history.shape[0], self.num_items + 1), bool).at[:, 0].set(True)
        if self.exclude_history:
            excluded = excluded.at[jnp.arange(history.shape[0])[:, None], history].set(True)
        return excluded

    def _beam_metrics(self, params: Any, memory: jax.Array, memory_real: jax.Array, exact_scores: jax.Array,
                      excluded: jax.Array) -> dict:
        """The beam's top beam_items ("lists"), and per row: the fraction of returned IDs that are
        no item's, constrained as configured and unconstrained, and whether the beam's top 10
        equals the exact scorer's (the same items excluded in both)."""
        cfg = self.config
        n = cfg.beam_items
        found = self.beam_search(params, memory, memory_real, cfg.beam_width, cfg.beam_constrained, excluded, n)
        free = found if not cfg.beam_constrained else self.beam_search(
            params, memory, memory_real, cfg.beam_width, False, excluded, n)
        agree = min(10, n)
        exact_top = jax.lax.top_k(exact_scores, agree)[1]
        return {"lists": {"beam": found["items"][:, :n]},
                "means": {"invalid_rate": jnp.mean(found["off_trie"][:, :n], axis=1),
                          "unconstrained_invalid_rate": jnp.mean(free["off_trie"][:, :n], axis=1),
                          "beam_exact_agreement": jnp.all(found["items"][:, :agree] == exact_top, axis=1)}}

    def step_counts(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Examples, and the real encoder tokens and (query, key) pairs they hold: exact when every
        position is an example, expected values over the draw when targets_per_row positions are."""
        cfg = self.config
        has_target = (batch["targets"] > 0).astype(jnp.float32)
        weight = has_target
        if cfg.targets_per_row and cfg.targets_per_row < has_target.shape[1]:
            per_row = jnp.sum(has_target, axis=1, keepdims=True)
            weight = has_target * jnp.minimum(per_row, cfg.targets_per_row) / jnp.maximum(per_row, 1.0)
        encoder_length = 1.0 + cfg.id_length * jnp.minimum(batch["positions"] + 1, cfg.history_items)
        examples = jnp.sum(weight)
        encoder_tokens = jnp.sum(weight * encoder_length)
        return {"tokens": encoder_tokens + examples * cfg.id_length, "examples": examples,
                "encoder_tokens": encoder_tokens, "encoder_pairs": jnp.sum(weight * encoder_length**2)}

    def provenance(self) -> dict:
        return {"semantic_ids": self.ids_record}


def synthetic_codes(num_items: int, levels: int, codebook: int, collision_code: bool = True) -> np.ndarray:
    """(num_items, levels [+ 1]) distinct codes without data (benchmarks, random-id mode): the
    mixed-radix digits of the dense index, the overflow as the collision code."""
    index = np.arange(num_items)
    digits = [(index // codebook**j) % codebook for j in reversed(range(levels))]
    if not collision_code:
        if num_items > codebook**levels:
            raise ConfigError(f"{num_items} items do not fit {levels} levels of {codebook} codes without "
                              f"model.ids_collision_code")
        return np.stack(digits, axis=1).astype(np.int32)
    return np.stack([*digits, index // codebook**levels], axis=1).astype(np.int32)


def vocabulary_codes(codes: np.ndarray, config: EncDecConfig) -> np.ndarray:
    """(num_items + 1, id_length) vocabulary ids of per-level codes (row 0: PAD, for padding items)."""
    if codes.shape[1] != config.id_length:
        raise ConfigError(f"the semantic IDs have {codes.shape[1]} codes per item; model.ids_levels={config.ids_levels}"
                          f" and model.ids_collision_code={config.ids_collision_code} make {config.id_length}")
    if codes.max() >= config.ids_codebook:
        largest = f" (largest collision group {int(codes[:, -1].max()) + 1})" if config.ids_collision_code else ""
        raise ConfigError(f"the semantic IDs use codes up to {int(codes.max())}{largest}; every level holds "
                          f"model.ids_codebook={config.ids_codebook}: raise ids_codebook or ids_levels")
    ids = SPECIALS + codes + np.arange(config.id_length) * config.ids_codebook
    return np.concatenate([np.full((1, config.id_length), PAD), ids]).astype(np.int32)
