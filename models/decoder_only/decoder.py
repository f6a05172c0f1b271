"""The decoder-only sequential recommenders (HSTU, SASRec): shared config, input, output, loss,
evaluation and FLOP accounting; each family supplies its block (models/decoder_only/hstu.py, models/decoder_only/sasrec.py).

Shapes: B rows, L tokens per row, D = d_model. Inputs are the pipeline's token fields (see
config/batch.py): items, timestamps, next_timestamps, segment_ids, positions, all (B, L).
Output: (B, L, D) L2-normalised embeddings; item scores are cosine similarities with the
L2-normalised rows of the (tied) item table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from config.batch import BOOKKEEPING, ROW_FIELDS, TOKEN_FIELDS
from config.fields import ConfigError, positive, fraction
from models.core import axes, family, parametrization, tables
from models.core.attention import causal_query_blocks
from models.core.family import TRAIN_MULTIPLIER, BatchField, FamilyConfig
from models.core.layers import (EMBEDDING_SCOPE, LOSS_SCOPE, NEGATIVES_SCOPE, RowDropout, hand_written_kernels,
                                l2_normalize, logical_param, row_keys, truncated_normal)
from models.core.losses import (full_softmax_loss, in_batch_log_q, in_batch_negatives, sample_negatives,
                                sampled_softmax_loss, scores_all_items)

TRAIN_FIELDS = {name: BatchField(np.int32, (axes.BATCH, axes.LENGTH))
                for name in TOKEN_FIELDS if name not in BOOKKEEPING}
EVAL_FIELDS = {**TRAIN_FIELDS, **{name: BatchField(dtype, (axes.BATCH,))
                                  for name, dtype in ROW_FIELDS.items() if name not in BOOKKEEPING}}
MODEL_INPUTS = tuple(name for name in TRAIN_FIELDS if name != "targets")


@dataclasses.dataclass(frozen=True)
class DecoderConfig(FamilyConfig):
    """Fields every decoder-only family has. d_model = D; blocks; heads = H; max_positions: rows
    of the positional table (the spec's N); dropout: the block output dropout; input_dropout:
    dropout on the input embeddings; causal_splits: attention in query blocks, each computed
    against the keys up to its end only (1 = the whole L x L square; 2 skips the all-masked
    upper-right quarter). compute_dtype: "float32" or "bfloat16" (parameters stay float32)."""

    d_model: int = positive(50)
    blocks: int = positive(2)
    heads: int = positive(1)
    max_positions: int = positive(211)
    dropout: float = fraction(0.2)
    input_dropout: float = fraction(0.2)
    causal_splits: int = positive(2)


class SequentialRecommender(nn.Module):
    """Item table and positions in, the family's blocks, L2-normalised outputs. With
    table_outside, the module has no item table: the caller passes the item vectors (the rows a
    sparse update gathered, models/core/tables.py)."""

    config: DecoderConfig
    num_items: int
    parts: "DecoderFamily"
    table_outside: bool = False

    def setup(self) -> None:
        cfg = self.config
        rows = self.num_items + 1
        if not self.table_outside:
            self.item_table = logical_param(self, "item_embedding", tables.padded_init(truncated_normal(0.02), rows),
                                            (tables.padded_rows(rows), cfg.d_model), (axes.TABLE_ROWS, axes.EMBED))
        self.position_table = logical_param(self, "position_embedding", self.parts.position_init(cfg),
                                            (cfg.max_positions, cfg.d_model), (axes.POSITIONS, axes.EMBED))
        self.blocks = [self.parts.block(cfg, name=f"block_{i}") for i in range(cfg.blocks)]
        self.input_dropout = RowDropout(cfg.input_dropout)

    def __call__(self, batch: Mapping[str, jax.Array], deterministic: bool = True,
                 item_vectors: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        real = (batch["segment_ids"] > 0)[..., None]
        with jax.named_scope(EMBEDDING_SCOPE):
            if item_vectors is None:
                item_vectors = jnp.take(self.item_table, batch["items"], axis=0, mode="clip")
            x = item_vectors * math.sqrt(parametrization.input_width(cfg))  # sqrt(D): the input scale
            x = x + jnp.take(self.position_table, batch["positions"], axis=0, mode="clip")
        rows = batch.get(family.ROW_IDS)  # training only: dropout masks are drawn per row
        x = self.input_dropout(x, rows, deterministic=deterministic)
        x = nn.with_logical_constraint(jnp.where(real, x, 0.0).astype(dtype), (axes.BATCH, axes.LENGTH, axes.EMBED))
        context = {**self.parts.block_context(cfg, batch), "rows": rows}
        for block in self.blocks:
            x = block(x, context, deterministic=deterministic)
        x = jnp.where(real, x, 0.0)
        return l2_normalize(x.astype(jnp.float32))


def build_model(config: DecoderConfig, num_items: int) -> SequentialRecommender:
    """The flax module of a decoder-only family's config."""
    parts = family.of(config)
    if not isinstance(parts, DecoderFamily):
        raise ConfigError(f"model.family={config.family!r} is not a decoder-only family")
    return SequentialRecommender(config, num_items, parts)


@dataclasses.dataclass(frozen=True)
class DecoderModel(family.Model):
    """Next-item training (sampled or full softmax over cosine / temperature logits) and
    full-ranking evaluation of a SequentialRecommender."""

    module: SequentialRecommender
    train: Any  # scaling.config.TrainConfig
    num_items: int

    def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Any:
        return self.module.init({"params": rng}, {k: batch[k] for k in MODEL_INPUTS})["params"]

    def _apply(self, params: Any, batch: Mapping[str, jax.Array], deterministic: bool = True, **kwargs: Any) -> jax.Array:
        """The module's outputs; a RowSubset item table (a sparse update's rows) is read outside it."""
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        if family.ROW_IDS in batch:
            inputs[family.ROW_IDS] = batch[family.ROW_IDS]
        table = params["item_embedding"]
        if isinstance(table, tables.RowSubset):
            others = {k: v for k, v in params.items() if k != "item_embedding"}
            return self.module.clone(table_outside=True).apply(
                {"params": others}, inputs, deterministic, tables.take_rows(table, batch["items"]), **kwargs)
        return self.module.apply({"params": params}, inputs, deterministic, **kwargs)

    def loss_sums(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, jax.Array, dict]:
        dropout_rng, negatives_rng = jax.random.split(rng)
        outputs = self._apply(params, {**batch, family.ROW_IDS: family.row_ids(batch)}, False,
                              rngs={"dropout": dropout_rng})
        table = params["item_embedding"]
        targets = batch["targets"]
        if self.train.loss == "full_softmax":
            with jax.named_scope(LOSS_SCOPE):
                loss_sum, count = full_softmax_loss(outputs, targets, table, self.train.temperature, self.num_items)
        else:
            with jax.named_scope(NEGATIVES_SCOPE):
                negatives, negative_log_q, target_log_q = self._negatives(batch, negatives_rng)
            with jax.named_scope(LOSS_SCOPE):
                loss_sum, count = sampled_softmax_loss(outputs, targets, table, negatives, self.train.temperature,
                                                       negative_log_q=negative_log_q, target_log_q=target_log_q)
        return loss_sum, count, {"losses": {}, "metrics": {}}

    def _negatives(self, batch: Mapping[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, Any, Any]:
        """(negatives, their log expected counts, the targets' log expected counts) of
        train.negative_sampler (the counts None for uniform draws): (B, L, R) per position, drawn
        per row; (R,) shared, drawn from the step's key or, in_batch, from Model.step_inputs."""
        train, targets = self.train, batch["targets"]
        if train.negative_sampler == "uniform":
            keys = row_keys(rng, family.row_ids(batch))
            return sample_negatives(keys, targets.shape, train.negatives, self.num_items), None, None
        if train.negative_sampler == "shared":
            return jax.random.randint(rng, (train.negatives,), 1, self.num_items + 1, jnp.int32), None, None
        drawn = batch[family.STEP_INPUTS]
        return (drawn["negatives"], in_batch_log_q(drawn, drawn["negatives"], train.negatives),
                in_batch_log_q(drawn, targets, train.negatives))

    def step_inputs(self, batch: Mapping[str, jax.Array], rng: jax.Array) -> dict:
        """In-batch negatives are drawn from the whole step's targets."""
        if self.train.loss != "sampled_softmax" or self.train.negative_sampler != "in_batch":
            return {}
        return in_batch_negatives(jax.random.split(rng)[1], batch["targets"], self.train.negatives)

    def touched_rows(self, batch: Mapping[str, jax.Array], rng: jax.Array) -> dict[str, jax.Array]:
        """Item rows the loss reads: the inputs, the targets and the negatives."""
        negatives, _, _ = self._negatives(batch, jax.random.split(rng)[1])
        ids = (batch["items"], batch["targets"], negatives)
        return {"item_embedding": jnp.concatenate([x.reshape(-1) for x in ids])}

    def coordinates(self, params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Every block's output (B, L, D) on the batch (deterministic)."""
        return family.block_outputs(self.module, params, {k: batch[k] for k in MODEL_INPUTS}, True)

    def _query(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        """(B, D) the output at each row's eval_position."""
        outputs = self._apply(params, batch)
        return jnp.take_along_axis(outputs, batch["eval_position"][:, None, None], axis=1)[:, 0]

    def evaluate(self, params: Any, batch: Mapping[str, jax.Array]) -> dict:
        """Per row: the target's full-ranking rank (history excluded, target never; and with the
        history kept) and its full-softmax loss, for rows with eval_valid; the catalogue is scored
        in chunks on the devices that hold its rows (models/core/tables.py)."""
        rank, rank_with_history, loss = tables.target_ranks(
            self._query(params, batch), params["item_embedding"], batch["eval_target"], batch["items"], self.num_items,
            self.train.temperature)
        return {"rank": rank, "rank_with_history": rank_with_history, "loss": loss, "valid": batch["eval_valid"]}

    def top_items(self, params: Any, batch: Mapping[str, jax.Array], k: int) -> dict[str, jax.Array]:
        """The k items of highest cosine score with the query, history and padding excluded."""
        scores, items = tables.top_items(self._query(params, batch), params["item_embedding"], batch["items"],
                                         self.num_items, k)
        return {"items": items.astype(jnp.int32), "scores": scores}

    def step_counts(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        real = batch["segment_ids"] > 0
        # sum over segments of n^2 = sum over their tokens of (2 p + 1), p the position in the segment
        squared_lengths = jnp.sum(jnp.where(real, 2 * batch["positions"] + 1, 0).astype(jnp.float32))
        return {"tokens": jnp.sum(real).astype(jnp.float32), "squared_lengths": squared_lengths}


def relative_timestamps(batch: Mapping[str, Any], xp: Any = np) -> tuple[Any, Any]:
    """Timestamps minus each row's earliest real one, as int32: only differences within a row
    matter (HSTU's time buckets), and epoch seconds would not survive JAX's default int32.
    xp: numpy on the host, jax.numpy inside a jitted function."""
    real = batch["segment_ids"] > 0
    big = np.iinfo(batch["timestamps"].dtype).max
    base = xp.min(xp.where(real, batch["timestamps"], big), axis=1, keepdims=True)
    base = xp.where(base == big, 0, base)
    shift = lambda t: xp.where(real, xp.clip(t - base, 0, np.iinfo(np.int32).max), 0).astype(np.int32)
    return shift(batch["timestamps"]), shift(batch["next_timestamps"])


class DecoderFamily(family.Family):
    """What HSTU and SASRec share; subclasses give the block and its per-token / per-pair counts."""

    block: ClassVar[type[nn.Module]]

    # ---- the family's model ----------------------------------------------------------------
    def position_init(self, config: DecoderConfig) -> Callable:
        raise NotImplementedError

    def block_context(self, config: DecoderConfig, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """What every block reads besides x (masks, time buckets), built once per forward pass."""
        raise NotImplementedError

    def build(self, config: DecoderConfig, train: Any, num_items: int) -> DecoderModel:
        return DecoderModel(build_model(config, num_items), train, num_items)

    def train_fields(self, config: DecoderConfig) -> Mapping[str, BatchField]:
        return TRAIN_FIELDS

    def eval_fields(self, config: DecoderConfig) -> Mapping[str, BatchField]:
        return EVAL_FIELDS

    def device_batch(self, config: DecoderConfig, batch: Mapping[str, Any], fields: Mapping[str, BatchField],
                     xp: Any = np) -> dict[str, Any]:
        shifted = dict(batch)
        shifted["timestamps"], shifted["next_timestamps"] = relative_timestamps(batch, xp)
        return super().device_batch(config, shifted, fields, xp)

    # ---- rules -------------------------------------------------------------------------------
    def check_trial(self, config: DecoderConfig, data: Any, train: Any) -> None:
        if data.row_len > config.max_positions:
            raise ConfigError(f"data.max_len + 1 = {data.row_len} exceeds model.max_positions = {config.max_positions}")

    def check_data(self, config: DecoderConfig, train: Any, num_items: int) -> None:
        if train.loss == "sampled_softmax" and train.negatives >= num_items:
            raise ConfigError(f"train.negatives={train.negatives} must be below the catalogue size ({num_items} items)")

    # ---- accounting (the lab's FLOP convention: scaling/engine/flops.py) ------------------------------------
    def linear_flops_per_token(self, config: DecoderConfig) -> float:
        """Forward matmul FLOPs per token of one block, attention excluded."""
        raise NotImplementedError

    def attention_flops_per_pair(self, config: DecoderConfig) -> float:
        """Forward FLOPs of one (query, key) pair of one block: QK^T and AV over all heads."""
        raise NotImplementedError

    def block_params(self, config: DecoderConfig) -> int:
        raise NotImplementedError

    def reduction_products_per_token(self, config: DecoderConfig) -> float:
        """Training FLOPs per token of the matrix-vector products that stand in for XLA:CPU's
        slow reductions (models/core/layers.py), when those kernels are in use."""
        return 0.0

    def executed_pairs(self, config: DecoderConfig, row_len: int) -> tuple[float, int]:
        """(query-key pairs per row the attention computes, passes over them in training)."""
        pairs = float(sum((end - start) * end for start, end in causal_query_blocks(row_len, config.causal_splits)))
        return pairs, TRAIN_MULTIPLIER

    def extra_executed_flops(self, config: DecoderConfig, pairs: float) -> float:
        return 0.0

    def scoring_flops_per_position(self, config: DecoderConfig, train: Any, num_items: int) -> float:
        return 2.0 * config.d_model * (num_items if train.loss == "full_softmax" else 1 + train.negatives)

    def model_flops(self, config: DecoderConfig, train: Any, counts: Mapping[str, float], num_items: int) -> float:
        """Matmuls on real tokens, causal attention as n^2 / 2 per segment, the scoring matmul
        per supervised position, forward x 3."""
        forward = config.blocks * (self.linear_flops_per_token(config) * counts["tokens"]
                                   + self.attention_flops_per_pair(config) * counts["squared_lengths"] / 2.0)
        forward += self.scoring_flops_per_position(config, train, num_items) * counts["positions"]
        return TRAIN_MULTIPLIER * float(forward)

    def executed_flops(self, config: DecoderConfig, train: Any, rows: int, row_len: int, num_items: int) -> float:
        """Every position, the attention tiles computed (masked pairs included), the scoring as
        implemented, and the matrix-vector products of models/core/layers.py."""
        tokens = float(rows * row_len)
        pairs_per_row, attention_passes = self.executed_pairs(config, row_len)
        pairs = rows * pairs_per_row
        forward = config.blocks * self.linear_flops_per_token(config) * tokens
        scores_every_row = train.negative_sampler == "uniform" and train.table_optimizer == "adam" and \
            scores_all_items(tables.padded_rows(num_items + 1), train.negatives)
        if train.loss == "full_softmax" or scores_every_row:
            forward += 2.0 * config.d_model * (num_items + 1) * tokens
        else:
            forward += 2.0 * config.d_model * (1 + train.negatives) * tokens
        executed = TRAIN_MULTIPLIER * forward
        if hand_written_kernels():
            executed += self.reduction_products_per_token(config) * tokens
        executed += attention_passes * config.blocks * self.attention_flops_per_pair(config) * pairs
        return executed + self.extra_executed_flops(config, pairs)

    def param_counts(self, config: DecoderConfig, num_items: int) -> dict[str, int]:
        non_embedding = config.blocks * self.block_params(config)
        total = non_embedding + (num_items + 1) * config.d_model + config.max_positions * config.d_model
        return {"params": total, "params_non_embedding": non_embedding, "params_active": total}

    def item_table(self, config: DecoderConfig, params: Any) -> np.ndarray:
        table = np.asarray(params["item_embedding"], np.float32)[1:]  # row 0 is padding; rows past the items are 0
        # Items are scored against unit-norm rows (candidates()), so their directions are the vectors.
        return table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)

    def full_row_counts(self, config: DecoderConfig, rows: int, row_len: int) -> dict[str, float]:
        return {**super().full_row_counts(config, rows, row_len), "squared_lengths": float(rows * row_len * row_len)}

    def scores_bytes_per_row(self, config: DecoderConfig, row_len: int) -> float:
        return config.heads * row_len * row_len * 4.0
