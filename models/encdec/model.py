"""The encoder-decoder family over semantic IDs (TIGER: Rajput et al., NeurIPS 2023, arXiv 2305.05065,
its generator and beam search; OneRec's mixture-of-experts decoder, arXiv 2502.18965): items are generated as their L + 1 codes (L residual levels + the collision code).

Vocabulary (one tied table, D wide): 0 PAD, 1 BOS, then (L + 1) ranges of K codes (level j owns
[2 + j K, 2 + (j + 1) K); the collision code has K values too, as in TIGER), then U hashed user
tokens. Every level, the collision level included, owns K = ids_codebook tokens, so sizes and
FLOPs follow from the config alone; IDs whose largest collision group exceeds K are refused.

Dropout (model.dropout) acts on the embeddings and every residual branch, not on attention
weights: on a CPU a mask per (query, key) pair costs more than the attention itself.

Training examples: every (history, next item) of a training row (model.targets_per_row = 0, the
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
import math
from typing import Any, Literal, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from config.batch import BOOKKEEPING, ROW_FIELDS
from models.core import axes, family, parametrization
from models.core.family import block_outputs
from models.encdec.beam_search import beam_search
from models.encdec.layers import DecoderBlock, EncoderBlock, Norm, relative_buckets
from models.core.family import TRAIN_MULTIPLIER, BatchField, FamilyConfig, ItemCodes, ItemCodesRequest
from config.fields import ConfigError, constrained, fraction, non_negative, positive
from models.encdec.id_trie import IdTrie, build_trie
from models.encdec.moe import capacity
from models.core.layers import EMBEDDING_SCOPE, LOSS_SCOPE, RowDropout, logical_param, row_keys, truncated_normal

PAD, BOS, SPECIALS = 0, 1, 2
_TOKENS = (axes.BATCH, axes.LENGTH)
TRAIN_FIELDS = {name: BatchField(np.int32, _TOKENS) for name in ("items", "targets", "segment_ids", "positions",
                                                                 "user_tokens")}
EVAL_FIELDS = {**{k: v for k, v in TRAIN_FIELDS.items() if k != "targets"},
               **{name: BatchField(dtype, (axes.BATCH,)) for name, dtype in ROW_FIELDS.items()
                  if name not in BOOKKEEPING}}


@dataclasses.dataclass(frozen=True)
class EncDecConfig(FamilyConfig):
    """d_model = D; heads x head_dim (0: D / heads) = A; d_ff = F; encoder_blocks, decoder_blocks;
    norm: pre-norm kind; positions: T5 relative buckets (relative_buckets, relative_max_distance) or
    learned tables; history_items = H; targets_per_row: examples per training row (0 = every
    position); user_buckets = U hashed user tokens; score_chunk: items per chunk of the exact
    scorer. ids: a semantic-ID artefact (python -m data semantic-ids, .npz) or IDs as JSON
    ({item: [c1, ..., cL]}, used as given); empty = built from the ids_* fields (cached), so the
    tokenizer is a sweep axis like d_model. ids_collision_code: the (L + 1)-th code that makes
    repeated L-tuples distinct; off only for IDs given distinct (JSON IDs of L full levels).
    experts > 0: the decoder's feed-forward is a mixture of that many experts (models/encdec/moe.py) of expert_d_ff
    hidden units, top_k routed, capacity_factor, balance_loss_weight x the Switch loss. beam_width: beams of
    the evaluation's beam search beside the exact scorer (0 = none); beam_items: the items it
    returns (may exceed the beams); beam_constrained: decode only IDs of items (the trie).
    exact_scorer: false ranks by the beam alone (metrics at K <= beam_items, no eval loss), for
    catalogues too large to decode every item for every user."""

    family: Literal["encdec"] = "encdec"
    d_model: int = positive(64)
    heads: int = positive(4)
    head_dim: int = non_negative(0, ">= 0 (0 = d_model / heads)")
    encoder_blocks: int = positive(2)
    decoder_blocks: int = positive(2)
    d_ff: int = positive(256)
    activation: Literal["relu", "gelu"] = "relu"
    dropout: float = fraction(0.1)
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    positions: Literal["relative", "learned"] = "relative"
    relative_buckets: int = positive(32)
    relative_max_distance: int = positive(128)
    history_items: int = positive(20)
    targets_per_row: int = non_negative(0, ">= 0 (0 = every position)")
    user_buckets: int = positive(2000)
    score_chunk: int = positive(256)
    ids: str = ""
    ids_method: Literal["rqkmeans", "rqkmeans-balanced", "rqvae"] = "rqkmeans-balanced"
    ids_levels: int = positive(3)
    ids_codebook: int = positive(64)
    ids_source: str = "metadata+cooccurrence"
    ids_seed: int = non_negative(0)
    ids_collision_code: bool = True
    beam_width: int = non_negative(20, ">= 0 (0 = exact scoring only)")
    beam_items: int = positive(10)
    beam_constrained: bool = True
    exact_scorer: bool = True
    experts: int = non_negative(0, ">= 0 (0 = a dense decoder feed-forward)")
    top_k: int = constrained(1, lambda v: v in (1, 2), "1 or 2")
    capacity_factor: float = constrained(1.25, lambda v: math.isfinite(v) and v > 0, "finite and > 0")
    expert_d_ff: int = non_negative(0, ">= 0 (0 = d_ff)")
    balance_loss_weight: float = constrained(0.01, lambda v: math.isfinite(v) and v >= 0, "finite and >= 0")

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.heads

    @property
    def width(self) -> int:
        return self.heads * self.attention_head_dim

    @property
    def id_length(self) -> int:
        return self.ids_levels + int(self.ids_collision_code)

    @property
    def encoder_length(self) -> int:
        return 1 + self.history_items * self.id_length

    @property
    def vocab_size(self) -> int:
        return SPECIALS + self.id_length * self.ids_codebook + self.user_buckets

    def check(self) -> None:
        if not self.head_dim and self.d_model % self.heads:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by model.heads={self.heads} "
                              f"(or set model.head_dim)")
        if self.experts and self.top_k > self.experts:
            raise ConfigError(f"model.top_k={self.top_k} is more than model.experts={self.experts}")
        if self.ids_codebook < 2:
            raise ConfigError(f"model.ids_codebook={self.ids_codebook} must be at least 2")
        if not self.exact_scorer and not self.beam_width:
            raise ConfigError("model.exact_scorer=false ranks by the beam alone: set model.beam_width > 0")
        if self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 4:
            raise ConfigError("model.relative_buckets must be >= 4 and relative_max_distance > relative_buckets / 4")


def _readout_scale(cfg: "EncDecConfig") -> float:
    """T5's D^-1/2 on the tied logits; under µP 1 / m on base_width^-1/2 (models/core/parametrization.py)."""
    return parametrization.readout_factor(cfg) / math.sqrt(parametrization.input_width(cfg))


class EncDecNetwork(nn.Module):
    """Token table, encoder stack, decoder stack. Inputs are vocabulary ids."""

    config: EncDecConfig

    def setup(self) -> None:
        cfg = self.config
        self.table = logical_param(self, "token_embedding", truncated_normal(1.0), (cfg.vocab_size, cfg.d_model),
                                   (axes.VOCAB, axes.EMBED))
        if cfg.positions == "learned":
            self.encoder_positions = logical_param(self, "encoder_position_embedding", truncated_normal(0.02),
                                                   (cfg.encoder_length, cfg.d_model), (axes.POSITIONS, axes.EMBED))
            self.decoder_positions = logical_param(self, "decoder_position_embedding", truncated_normal(0.02),
                                                   (cfg.id_length, cfg.d_model), (axes.POSITIONS, axes.EMBED))
        else:
            self.encoder_bias = logical_param(self, "encoder_relative_bias", nn.initializers.normal(0.1),
                                              (cfg.relative_buckets, cfg.heads), (axes.RELATIVE, None))
            self.decoder_bias = logical_param(self, "decoder_relative_bias", nn.initializers.normal(0.1),
                                              (cfg.relative_buckets, cfg.heads), (axes.RELATIVE, None))
        self.encoder_blocks = [EncoderBlock(cfg, name=f"encoder_{i}") for i in range(cfg.encoder_blocks)]
        self.decoder_blocks = [DecoderBlock(cfg, name=f"decoder_{i}") for i in range(cfg.decoder_blocks)]
        self.encoder_norm = Norm(cfg.norm, name="encoder_norm")
        self.decoder_norm = Norm(cfg.norm, name="decoder_norm")
        self.dropout = RowDropout(cfg.dropout)

    def _bias(self, table: jax.Array, length: int, bidirectional: bool) -> jax.Array:
        cfg = self.config
        buckets = relative_buckets(length, length, bidirectional, cfg.relative_buckets, cfg.relative_max_distance)
        return jnp.transpose(table[buckets], (2, 0, 1))  # (H, length, length)

    def encode(self, tokens: jax.Array, deterministic: bool, rows: jax.Array | None = None) -> jax.Array:
        """(B, S) ids -> (B, S, D) memory (padding rows are masked by callers). rows (B,): each
        sequence's example id, from which its dropout masks are drawn (training only)."""
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        with jax.named_scope(EMBEDDING_SCOPE):
            x = jnp.take(self.table, tokens, axis=0)
        bias = None
        if cfg.positions == "learned":
            x = x + self.encoder_positions[None, : tokens.shape[1]]
        else:
            bias = self._bias(self.encoder_bias, tokens.shape[1], bidirectional=True)
        real = tokens != PAD
        mask = (real[:, None, :] & real[:, :, None])[:, None]  # (B, 1, S, S)
        x = self.dropout(x.astype(dtype), rows, deterministic=deterministic)
        for block in self.encoder_blocks:
            x = block(x, mask, bias, deterministic, rows)
        return self.dropout(self.encoder_norm(x), rows, deterministic=deterministic)

    def decode(self, tokens: jax.Array, memory: jax.Array, memory_real: jax.Array, deterministic: bool,
               group: int = 1, rows: jax.Array | None = None) -> jax.Array:
        """(B, C, T) decoder ids against (B, S, D) memory -> (B, C, T, D) outputs. group: the
        consecutive (B, C) sequences a mixture-of-experts feed-forward routes together."""
        cfg = self.config
        length = tokens.shape[-1]
        with jax.named_scope(EMBEDDING_SCOPE):
            x = jnp.take(self.table, tokens, axis=0)
        bias = None
        if cfg.positions == "learned":
            x = x + self.decoder_positions[:length]
        else:
            bias = self._bias(self.decoder_bias, length, bidirectional=False)
        causal = jnp.tril(jnp.ones((length, length), bool))
        cross_mask = memory_real[:, None, None, None, :]  # (B, 1, 1, 1, S)
        x = self.dropout(x.astype(memory.dtype), rows, deterministic=deterministic)
        real = tokens[..., 1] != PAD  # (B, C): sequences of a real item (padding targets are all PAD)
        for block in self.decoder_blocks:
            x = block(x, memory, causal, cross_mask, bias, deterministic, real, group, rows)
        return self.dropout(self.decoder_norm(x), rows, deterministic=deterministic)

    def level_logits(self, outputs: jax.Array) -> jax.Array:
        """(..., T, D) decoder outputs -> (..., T, K) logits, position j over level j's K tokens
        (tied with the token table, scaled by D^-1/2 as T5 does)."""
        cfg = self.config
        k = cfg.ids_codebook
        levels = self.table[SPECIALS : SPECIALS + cfg.id_length * k].reshape(cfg.id_length, k, cfg.d_model)
        return jnp.einsum("...td,tkd->...tk", outputs.astype(jnp.float32), levels) * _readout_scale(cfg)

    def memory_keys_values(self, memory: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Every decoder block's cross-attention keys and values of (B, S, D) memory."""
        return tuple(block.memory_keys_values(memory) for block in self.decoder_blocks)

    def decode_step(self, tokens: jax.Array, position: jax.Array, caches: tuple, memory_kv: tuple,
                    memory_real: jax.Array) -> tuple[jax.Array, tuple]:
        """One decoder position for C sequences per memory row, deterministic: tokens (B, C), the
        ids at `position`; caches: per block (keys, values) (B, C, H, T, E). Returns (B, C, K)
        logits of the next level (position's level) and the updated caches."""
        cfg = self.config
        x = jnp.take(self.table, tokens, axis=0)[:, :, None]  # (B, C, 1, D)
        bias_row = None
        if cfg.positions == "learned":
            x = x + jax.lax.dynamic_index_in_dim(self.decoder_positions, position, keepdims=False)
        else:
            bias = self._bias(self.decoder_bias, cfg.id_length, bidirectional=False)
            bias_row = jax.lax.dynamic_slice_in_dim(bias, position, 1, axis=1)  # (H, 1, T)
        x = x.astype(memory_kv[0][0].dtype)
        cross_mask = memory_real[:, None, None, None, :]
        updated = []
        for block, cache, kv in zip(self.decoder_blocks, caches, memory_kv):
            x, cache = block.step(x, position, cache, kv, cross_mask, bias_row)
            updated.append(cache)
        outputs = self.decoder_norm(x)[:, :, 0]  # (B, C, D)
        k = cfg.ids_codebook
        level = jax.lax.dynamic_slice_in_dim(self.table, SPECIALS + position * k, k, axis=0)  # (K, D)
        logits = jnp.einsum("bcd,kd->bck", outputs.astype(jnp.float32), level) * _readout_scale(cfg)
        return logits, tuple(updated)

    def __call__(self, encoder_tokens: jax.Array, decoder_tokens: jax.Array, deterministic: bool = True,
                 group: int = 1, rows: jax.Array | None = None) -> jax.Array:
        memory = self.encode(encoder_tokens, deterministic, rows)
        outputs = self.decode(decoder_tokens[:, None], memory, encoder_tokens != PAD, deterministic, group, rows)[:, 0]
        return self.level_logits(outputs)


def moe_aux(intermediates: Mapping, config: EncDecConfig) -> dict:
    """The family's aux terms from the routing statistics every MoE layer sowed, averaged over
    layers: the weighted balance loss, and dropped fraction, router entropy, per-expert load."""
    layers = [stats for stats in jax.tree.leaves(intermediates, is_leaf=lambda x: isinstance(x, dict) and "balance" in x)]
    if not layers:
        return {"losses": {}, "metrics": {}}
    mean = {key: sum(layer[key] for layer in layers) / len(layers) for key in layers[0]}
    metrics = {"moe_dropped": mean["dropped"], "moe_entropy": mean["entropy"], "moe_balance": mean["balance"],
               "moe_load_max": jnp.max(mean["load"]) * config.experts,
               **{f"moe_load/{e}": mean["load"][e] for e in range(config.experts)}}
    losses = {"moe_balance_loss": config.balance_loss_weight * mean["balance"]} if config.balance_loss_weight else {}
    return {"losses": losses, "metrics": metrics}


def user_tokens(users: Any, config: EncDecConfig, xp: Any = np) -> Any:
    """The hashed user token of dense user indices (-1 = padding -> PAD). Knuth's multiplicative
    hash mod 2^32, by uint32 arithmetic that wraps the same in numpy and jax.numpy (xp)."""
    users = xp.asarray(users)
    hashed = (users.astype(np.uint32) * np.uint32(2654435761)) % np.uint32(config.user_buckets)
    first = SPECIALS + config.id_length * config.ids_codebook
    return xp.where(users >= 0, first + hashed.astype(np.int32), PAD).astype(np.int32)


def history_windows(items: jax.Array, segment_ids: jax.Array, positions: jax.Array, history: int) -> jax.Array:
    """(B, P, history) items ending at each chosen position (B, P) of its row, from the same
    segment, oldest first; 0 where the segment has no such item."""
    offsets = positions[..., None] - (history - 1) + jnp.arange(history)
    inside = offsets >= 0
    index = jnp.clip(offsets, 0, items.shape[1] - 1)
    picked = jnp.take_along_axis(items[:, None, :], index, axis=2)
    same = jnp.take_along_axis(segment_ids[:, None, :], index, axis=2) == jnp.take_along_axis(
        segment_ids, positions, axis=1)[..., None]
    return jnp.where(inside & same & (picked > 0), picked, 0)


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


class EncDec(family.Family):
    name = "encdec"
    config_class = EncDecConfig

    def build(self, config: EncDecConfig, train: Any, num_items: int) -> EncDecModel:
        """Without data: synthetic distinct IDs (benchmarks and shape-only uses)."""
        codes = synthetic_codes(num_items, config.ids_levels, config.ids_codebook, config.ids_collision_code)
        return EncDecModel(EncDecNetwork(config), config, num_items, vocabulary_codes(codes, config),
                           {"method": "synthetic", "levels": config.ids_levels, "codebook": config.ids_codebook},
                           getattr(train, "exclude_history", True))

    def item_codes_request(self, config: EncDecConfig) -> ItemCodesRequest:
        return ItemCodesRequest(config.ids, config.ids_method, config.ids_levels, config.ids_codebook, config.ids_source,
                                config.ids_seed, config.ids_collision_code,
                                keys={"path": "model.ids", **{field: f"model.ids_{field}" for field in (
                                    "method", "levels", "codebook", "source", "seed", "collision_code")}})

    def build_for(self, config: EncDecConfig, train: Any, num_items: int,
                  item_codes: ItemCodes | None = None) -> EncDecModel:
        if item_codes is None:
            return self.build(config, train, num_items)
        return EncDecModel(EncDecNetwork(config), config, num_items, vocabulary_codes(item_codes.codes, config),
                           dict(item_codes.provenance), getattr(train, "exclude_history", True))

    def train_fields(self, config: EncDecConfig) -> Mapping[str, BatchField]:
        return TRAIN_FIELDS

    def eval_fields(self, config: EncDecConfig) -> Mapping[str, BatchField]:
        return EVAL_FIELDS

    def device_batch(self, config: EncDecConfig, batch: Mapping[str, Any], fields: Mapping[str, BatchField],
                     xp: Any = np) -> dict[str, Any]:
        return super().device_batch(config, {**batch, "user_tokens": user_tokens(batch["users"], config, xp)},
                                    fields, xp)

    def check_data(self, config: EncDecConfig, train: Any, num_items: int) -> None:
        if config.ids_codebook > num_items:
            raise ConfigError(f"model.ids_codebook={config.ids_codebook} is larger than the catalogue ({num_items} items)")

    # ---- accounting -----------------------------------------------------------------------------
    def _per_token(self, config: EncDecConfig) -> dict[str, float]:
        d, a, f = config.d_model, config.width, config.d_ff
        # a mixture of experts counts its router and the top_k experts a token is routed to
        ffn = (config.top_k * 4.0 * d * (config.expert_d_ff or f) + 2.0 * d * config.experts
               if config.experts else 4.0 * d * f)
        return {"encoder": 8.0 * d * a + 4.0 * d * f,  # q, k, v, o; feed-forward in and out
                "decoder": 12.0 * d * a + ffn,  # self q, k, v, o; cross q, o; feed-forward (active)
                "cross_kv": 4.0 * d * a,  # cross-attention keys and values, per encoder token
                "pair": 4.0 * a,  # QK^T and AV of one (query, key) pair, all heads
                "logits": 2.0 * d * config.ids_codebook}

    def model_flops(self, config: EncDecConfig, train: Any, counts: Mapping[str, float], num_items: int) -> float:
        """Matmuls on real tokens: encoder (bidirectional pairs), decoder (causal self-attention as
        T^2 / 2 per example, cross-attention to the real encoder tokens), level logits; x 3."""
        c, t = self._per_token(config), config.id_length
        examples, enc_tokens = counts["examples"], counts["encoder_tokens"]
        forward = config.encoder_blocks * (c["encoder"] * enc_tokens + c["pair"] * counts["encoder_pairs"])
        forward += config.decoder_blocks * (c["decoder"] * examples * t + c["cross_kv"] * enc_tokens
                                            + c["pair"] * (examples * t * t / 2.0 + t * enc_tokens))
        forward += c["logits"] * examples * t
        return TRAIN_MULTIPLIER * float(forward)

    def _executed_decoder_token(self, config: EncDecConfig, group_tokens: int, slots: int) -> float:
        """Dot FLOPs per decoder token of one block as compiled: a mixture of experts runs every
        expert on its C slots of a group of N tokens, and its one-hot dispatch and combine."""
        c = self._per_token(config)
        if not config.experts:
            return c["decoder"]
        d, e, n, k = config.d_model, config.experts, group_tokens, config.top_k
        group = (2.0 * n * d * e + 2 * 2.0 * n * k * e * slots  # router; dispatch and combine weights
                 + 2 * 2.0 * n * e * slots * d  # dispatch and combine
                 + 4.0 * e * slots * d * (config.expert_d_ff or config.d_ff))  # the experts, on every slot
        return 12.0 * d * config.width + group / n

    def executed_flops(self, config: EncDecConfig, train: Any, rows: int, row_len: int, num_items: int) -> float:
        """Every example slot of the compiled step (padding included), full attention squares."""
        c, t, s = self._per_token(config), config.id_length, config.encoder_length
        per_row = config.targets_per_row if 0 < config.targets_per_row < row_len else row_len
        examples = float(rows * per_row)
        decoder = c["decoder"]
        if config.experts:
            decoder = self._executed_decoder_token(
                config, per_row * t, capacity(per_row * t, config.experts, config.top_k, config.capacity_factor))
        forward = config.encoder_blocks * examples * (c["encoder"] * s + c["pair"] * s * s)
        forward += config.decoder_blocks * examples * (decoder * t + c["cross_kv"] * s + c["pair"] * (t * t + t * s))
        forward += c["logits"] * examples * t
        return TRAIN_MULTIPLIER * forward

    def full_row_counts(self, config: EncDecConfig, rows: int, row_len: int) -> dict[str, float]:
        examples = float(rows * (config.targets_per_row if 0 < config.targets_per_row < row_len else row_len - 1))
        lengths = 1.0 + config.id_length * np.minimum(np.arange(1, row_len), config.history_items)
        per_example_tokens = float(np.mean(lengths))
        return {"tokens": examples * (per_example_tokens + config.id_length), "examples": examples,
                "encoder_tokens": examples * per_example_tokens, "encoder_pairs": examples * float(np.mean(lengths**2))}

    def beam_decode_flops(self, config: EncDecConfig, width: int, executed: bool = False) -> float:
        """Forward matmul FLOPs of one user's beam search: the encoder over a full history, the
        cross-attention keys and values once, then `width` beams x T positions of the cached
        decoder (self-attention over the t + 1 positions so far -- executed: over all T cache
        slots, masked -- cross-attention over S) and the K logits of each position's level."""
        c, t, s = self._per_token(config), config.id_length, config.encoder_length
        encoder = config.encoder_blocks * (c["encoder"] * s + c["pair"] * s * s)
        cross_kv = config.decoder_blocks * c["cross_kv"] * s
        token = self._executed_decoder_token(config, 1, 1) if executed else c["decoder"]  # a beam's token routes alone
        steps = sum(config.decoder_blocks * (token + c["pair"] * ((t if executed else position + 1) + s)) + c["logits"]
                    for position in range(t))
        return float(encoder + cross_kv + width * steps)

    def param_counts(self, config: EncDecConfig, num_items: int) -> dict[str, int]:
        d, a, f = config.d_model, config.width, config.d_ff
        norm = d if config.norm == "rmsnorm" else 2 * d
        encoder = config.encoder_blocks * (4 * d * a + 2 * d * f + 2 * norm)
        expert = 2 * d * (config.expert_d_ff or f)
        ffn = config.experts * expert + d * config.experts if config.experts else 2 * d * f  # + the router
        idle = (config.experts - config.top_k) * expert if config.experts else 0  # experts a token skips
        decoder = config.decoder_blocks * (8 * d * a + ffn + 3 * norm)
        positions = 2 * config.relative_buckets * config.heads if config.positions == "relative" else 0
        non_embedding = encoder + decoder + 2 * norm + positions
        tables = config.vocab_size * d + ((config.encoder_length + config.id_length) * d
                                          if config.positions == "learned" else 0)
        total = non_embedding + tables
        return {"params": total, "params_non_embedding": non_embedding,
                "params_active": total - config.decoder_blocks * idle}

    def scores_bytes_per_row(self, config: EncDecConfig, row_len: int) -> float:
        examples = config.targets_per_row if 0 < config.targets_per_row < row_len else row_len
        return examples * config.heads * config.encoder_length**2 * 4.0

    def summary(self, config: EncDecConfig) -> dict[str, Any]:
        return {"d_model": config.d_model, "blocks": config.encoder_blocks + config.decoder_blocks,
                "heads": config.heads, "encoder_blocks": config.encoder_blocks, "decoder_blocks": config.decoder_blocks,
                "ids_levels": config.ids_levels, "ids_codebook": config.ids_codebook, "ids_method": config.ids_method,
                "ids_source": config.ids_source, "beam_width": config.beam_width,
                "beam_constrained": config.beam_constrained, "experts": config.experts, "top_k": config.top_k,
                "capacity_factor": config.capacity_factor, "expert_d_ff": config.expert_d_ff or config.d_ff,
                "decode_flops_per_user": self.beam_decode_flops(config, config.beam_width) if config.beam_width else None}


family.register(EncDec())
