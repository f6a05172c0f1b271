"""HSTU's pointwise attention, dense and blockwise (Zhai et al., ICML 2024, arXiv 2402.17152).

Shapes: q, k (B, L, H, dqk); v (B, L, H, dv); output (B, L, H, dv).
  out_i = sum_j [j <= i, same segment] SiLU(q_i . k_j + rab(i, j)) / N * v_j
rab(i, j) = w_pos[j - i + P - 1] + w_ts[bucket(t_{i+1} - t_j)]. Segments are contiguous, so
j - i is the within-segment position difference in packed rows too.

`dense` skips the causal square's upper blocks: queries go in `splits` blocks, each against the
keys up to its own end only (2 halves compute 3/4 of the square; every skipped pair is masked).

There is no softmax, so key blocks simply add up: `blockwise` computes one block of queries at a
time, adding up the key blocks up to its own (the causally masked ones are skipped), building
each tile's bias and mask from the timestamps and segment ids, and rematerialises the query
block in the backward pass. Nothing (L, L)-sized is ever held, so memory grows linearly with L;
it executes the lower triangle of tiles, plus one more forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from models.core.layers import add_bias

_LOG_BUCKET_WIDTH = 0.301  # the reference's bucketisation: floor(ln(|dt|) / 0.301)


def time_buckets(next_timestamps: jax.Array, timestamps: jax.Array, num_buckets: int) -> jax.Array:
    """(B, Lq, Lk) int32: bucket(t_{i+1} - t_j) = clamp(floor(ln(max(|d|, 1)) / 0.301), 0, num_buckets)."""
    delta = (next_timestamps[:, :, None] - timestamps[:, None, :]).astype(jnp.float32)
    bucket = jnp.floor(jnp.log(jnp.maximum(jnp.abs(delta), 1.0)) / _LOG_BUCKET_WIDTH)
    return jnp.clip(bucket, 0, num_buckets).astype(jnp.int32)


def position_bias(w_pos: jax.Array, query_index: jax.Array, key_index: jax.Array) -> jax.Array:
    """(Lq, Lk): w_pos[j - i + P - 1], with 2P - 1 = len(w_pos)."""
    last = w_pos.shape[0] - 1
    relative = key_index[None, :] - query_index[:, None] + last // 2
    return jnp.take(w_pos, jnp.clip(relative, 0, last), axis=0, mode="clip")


def pointwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, position: jax.Array, time: jax.Array,
                        mask: jax.Array, divisor: float) -> jax.Array:
    """SiLU(q . k + position + time) / divisor where mask, 0 elsewhere, times v.
    position: (Lq, Lk), the same for every row; time, mask: (B, Lq, Lk)."""
    # Head-major (B, H, L, d) operands make both products plain batched matmuls; on XLA:CPU the
    # (B, L, H, d) forms cost strided transposes of K and V in every backward pass.
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    scores = add_bias(jnp.einsum("bhid,bhjd->bhij", q, k), position.astype(q.dtype)) + time[:, None].astype(q.dtype)
    weights = jnp.where(mask[:, None], jax.nn.silu(scores) / divisor, 0.0).astype(q.dtype)
    return jnp.swapaxes(jnp.einsum("bhij,bhjd->bhid", weights, v), 1, 2)


def causal_query_blocks(length: int, splits: int) -> list[tuple[int, int]]:
    """[(start, end)] of `splits` near-equal query blocks of a causal square; block (start, end)
    needs keys [0, end) only. Empty blocks are dropped."""
    bounds = [round(length * i / splits) for i in range(splits + 1)]
    return [(start, end) for start, end in zip(bounds[:-1], bounds[1:]) if end > start]


def dense(q: jax.Array, k: jax.Array, v: jax.Array, w_pos: jax.Array, w_time: jax.Array,
          buckets: jax.Array, mask: jax.Array, divisor: float, splits: int = 1) -> jax.Array:
    """(B, H, L, L)-sized tiles from precomputed (B, L, L) time buckets and mask; with splits > 1
    the tiles of causal_query_blocks, whose keys stop at the block's end."""
    index = jnp.arange(q.shape[1])
    outputs = []
    for start, end in causal_query_blocks(q.shape[1], splits):
        time = jnp.take(w_time, buckets[:, start:end, :end], axis=0, mode="clip")
        position = position_bias(w_pos, index[start:end], index[:end])
        outputs.append(pointwise_attention(q[:, start:end], k[:, :end], v[:, :end], position, time,
                                           mask[:, start:end, :end], divisor))
    return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=1)


def blockwise(q: jax.Array, k: jax.Array, v: jax.Array, w_pos: jax.Array, w_time: jax.Array,
              timestamps: jax.Array, next_timestamps: jax.Array, segment_ids: jax.Array, divisor: float,
              block: int) -> jax.Array:
    """Equal to `dense`, one (block x block) tile at a time; timestamps etc. are (B, L).

    Query block b adds up key blocks 0..b (a scan over key blocks whose causally masked ones are
    skipped by lax.cond), and is rematerialised in the backward pass."""
    batch, length = segment_ids.shape
    blocks = -(-length // block)
    pad = blocks * block - length

    def by_block(x: jax.Array) -> jax.Array:  # (B, L, ...) -> (blocks, B, block, ...), padded
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(batch, blocks, block, *x.shape[2:]), 0, 1)

    num_buckets = w_time.shape[0] - 1
    key_blocks = (jnp.arange(blocks), by_block(k), by_block(v), by_block(timestamps), by_block(segment_ids))

    @jax.checkpoint
    def one_query_block(q_block: jax.Array, next_times: jax.Array, query_segments: jax.Array,
                        query_block: jax.Array) -> jax.Array:
        query_index = query_block * block + jnp.arange(block)

        def add_key_block(total: jax.Array, key: tuple) -> tuple[jax.Array, None]:
            key_block, k_block, v_block, key_times, key_segments = key

            def tile(total: jax.Array) -> jax.Array:
                key_index = key_block * block + jnp.arange(block)
                position = position_bias(w_pos, query_index, key_index)
                time = jnp.take(w_time, time_buckets(next_times, key_times, num_buckets), axis=0, mode="clip")
                mask = ((key_index[None, :] <= query_index[:, None])[None]
                        & (query_segments[:, :, None] == key_segments[:, None, :]) & (query_segments > 0)[:, :, None])
                return total + pointwise_attention(q_block, k_block, v_block, position, time, mask, divisor)

            return jax.lax.cond(key_block <= query_block, tile, lambda total: total, total), None

        total = jnp.zeros((*q_block.shape[:3], v.shape[-1]), jnp.float32)
        return jax.lax.scan(add_key_block, total, key_blocks)[0].astype(v.dtype)

    out = jax.lax.map(lambda xs: one_query_block(*xs),
                      (by_block(q), by_block(next_timestamps), by_block(segment_ids), jnp.arange(blocks)))
    out = jnp.swapaxes(out, 0, 1).reshape(batch, blocks * block, *out.shape[3:])
    return out[:, :length]
