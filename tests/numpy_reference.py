"""A plain-NumPy reference of the two decoder-only recommenders and their losses.

Written from ../shared/specs/hstu.md (HSTU, sampled softmax) and from the SASRec description in
models/decoder_only/sasrec.py's docstring (which follows generative_recommenders/research/.../sasrec.py), one
user's sequence at a time, in float64, with explicit loops where that reads more like the spec.
Nothing here imports the model code: only the parameter NAMES are shared with it.

Parameters come from the Flax pytree of `build_model(...).init(...)["params"]`:
  item_embedding (V + 1, D), position_embedding (P, D), and per block `block_{b}`:
  HSTU:   uvqk (D, 2 H dv + 2 H dqk), out_kernel (H dv, D), out_bias (D,),
          rel_pos_bias (2 P - 1,), rel_time_bias (time_buckets + 1,)
  SASRec: qkv_kernel (D, 3 D) [q | k | v], qkv_bias (3 D,), out_kernel (D, D), out_bias (D,),
          ffn_in_kernel (D, F), ffn_in_bias (F,), ffn_out_kernel (F, D), ffn_out_bias (D,)
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

ACCIDENTAL_HIT_LOGIT = -5e4
BUCKET_WIDTH = 0.301


def numpy_params(params: Any) -> dict:
    """The Flax params pytree (LogicallyPartitioned boxes allowed) as nested dicts of float64 arrays."""
    import flax.linen as nn  # only to unwrap the boxes

    params = nn.meta.unbox(params)

    def convert(tree: Any) -> Any:
        if isinstance(tree, Mapping):
            return {key: convert(value) for key, value in tree.items()}
        return np.asarray(tree, dtype=np.float64)

    return convert(params)


# ----------------------------------------------------------------------------- small functions

def layer_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis, no learned scale/shift (biased variance, as torch)."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def silu(x: np.ndarray | float) -> np.ndarray | float:
    return x / (1.0 + np.exp(-x))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    """torch.nn.GELU() default: x * Phi(x) with the exact normal CDF (erf)."""
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def l2_normalize(y: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """y / max(||y||_2, eps) over the last axis."""
    return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), eps)


def time_bucket(delta: float, num_buckets: int = 128) -> int:
    """bucket(d) = clamp(floor(ln(max(|d|, 1)) / 0.301), 0, num_buckets)."""
    value = math.floor(math.log(max(abs(float(delta)), 1.0)) / BUCKET_WIDTH)
    return int(min(max(value, 0), num_buckets))


def _embed(params: Mapping, items: np.ndarray, d_model: int) -> np.ndarray:
    """x_i = E[item_i] * sqrt(D) + P[i] (positions restart at 0 for every user)."""
    n = len(items)
    x = np.zeros((n, d_model))
    for i in range(n):
        x[i] = params["item_embedding"][int(items[i])] * math.sqrt(d_model) + params["position_embedding"][i]
    return x


# ----------------------------------------------------------------------------- HSTU

def hstu_user(params: Mapping, cfg: Any, items: np.ndarray, timestamps: np.ndarray,
              next_timestamps: np.ndarray) -> np.ndarray:
    """One user's HSTU outputs (n, D), L2-normalised, exactly as the spec states them.

    cfg needs: d_model, blocks, heads, dqk, dv, max_positions, attention_divisor, time_buckets
    (dqk / dv / attention_divisor of 0 take the defaults of models/core/config.py).
    """
    d, heads = cfg.d_model, cfg.heads
    dqk = cfg.dqk or d // heads
    dv = cfg.dv or d // heads
    positions = cfg.max_positions
    divisor = cfg.attention_divisor or positions  # the spec's constant N
    n = len(items)
    assert len(timestamps) == n and len(next_timestamps) == n and n <= positions

    x = _embed(params, items, d)
    for b in range(cfg.blocks):
        block = params[f"block_{b}"]
        w_pos, w_ts = block["rel_pos_bias"], block["rel_time_bias"]
        assert w_pos.shape == (2 * positions - 1,) and w_ts.shape == (cfg.time_buckets + 1,)

        projected = silu(layer_norm(x, 1e-6) @ block["uvqk"])
        # split order U, V, Q, K
        u = projected[:, 0:heads * dv]
        v = projected[:, heads * dv:2 * heads * dv]
        q = projected[:, 2 * heads * dv:2 * heads * dv + heads * dqk]
        k = projected[:, 2 * heads * dv + heads * dqk:]
        assert k.shape == (n, heads * dqk)

        # rab(i, j) = w_pos[j - i + N - 1] + w_ts[bucket(t_{i+1} - t_j)]  (shared by all heads)
        rab = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1):
                rab[i, j] = w_pos[j - i + positions - 1] + w_ts[time_bucket(next_timestamps[i] - timestamps[j], cfg.time_buckets)]

        attended = np.zeros((n, heads * dv))
        for h in range(heads):
            qh = q[:, h * dqk:(h + 1) * dqk]
            kh = k[:, h * dqk:(h + 1) * dqk]
            vh = v[:, h * dv:(h + 1) * dv]
            for i in range(n):
                for j in range(i + 1):  # causal: j <= i, no softmax, no 1/sqrt(d)
                    a_ij = silu(float(qh[i] @ kh[j]) + rab[i, j]) / divisor
                    attended[i, h * dv:(h + 1) * dv] += a_ij * vh[j]

        x = x + (u * layer_norm(attended, 1e-6)) @ block["out_kernel"] + block["out_bias"]
    return l2_normalize(x)


# ----------------------------------------------------------------------------- SASRec

def sasrec_user(params: Mapping, cfg: Any, items: np.ndarray) -> np.ndarray:
    """One user's SASRec outputs (n, D), L2-normalised (models/decoder_only/sasrec.py's docstring):

      q = LayerNorm(x); y = LayerNorm(q + MHA(q, x, x)); x = y + W2 act(W1 y + b1) + b2
    LayerNorms without learned parameters, eps 1e-8; causal softmax attention scaled by
    1/sqrt(dh); no final LayerNorm. cfg needs: d_model, blocks, heads, ffn_activation.
    """
    d, heads = cfg.d_model, cfg.heads
    dh = d // heads
    activation = relu if cfg.ffn_activation == "relu" else gelu_exact
    n = len(items)

    x = _embed(params, items, d)
    for b in range(cfg.blocks):
        block = params[f"block_{b}"]
        w, bias = block["qkv_kernel"], block["qkv_bias"]
        query_in = layer_norm(x, 1e-8)
        q = query_in @ w[:, 0:d] + bias[0:d]
        k = x @ w[:, d:2 * d] + bias[d:2 * d]
        v = x @ w[:, 2 * d:3 * d] + bias[2 * d:3 * d]

        attended = np.zeros((n, d))
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            for i in range(n):
                scores = np.array([q[i, cols] @ k[j, cols] / math.sqrt(dh) for j in range(i + 1)])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                for j in range(i + 1):
                    attended[i, cols] += weights[j] * v[j, cols]

        y = layer_norm(query_in + attended @ block["out_kernel"] + block["out_bias"], 1e-8)
        hidden = activation(y @ block["ffn_in_kernel"] + block["ffn_in_bias"])
        x = y + hidden @ block["ffn_out_kernel"] + block["ffn_out_bias"]
    return l2_normalize(x)


def forward_user(params: Mapping, cfg: Any, items: np.ndarray, timestamps: np.ndarray,
                 next_timestamps: np.ndarray) -> np.ndarray:
    if cfg.family == "hstu":
        return hstu_user(params, cfg, items, timestamps, next_timestamps)
    return sasrec_user(params, cfg, items)


# ----------------------------------------------------------------------------- losses

def _logsumexp(values: np.ndarray) -> float:
    top = float(np.max(values))
    return top + math.log(float(np.sum(np.exp(values - top))))


def sampled_softmax_loss(outputs: np.ndarray, targets: np.ndarray, item_table: np.ndarray,
                         negatives: np.ndarray, temperature: float) -> tuple[float, int]:
    """Mean over valid positions (target > 0) of -log softmax of the positive among
    [positive, negatives]; logits are cosine / temperature, and a negative equal to the
    positive gets the logit -5e4. outputs (..., D) already L2-normalised; item_table the raw
    (V + 1, D) table (rows get L2-normalised here); negatives (..., R). Returns (mean, count).
    """
    candidates = l2_normalize(np.asarray(item_table, np.float64))
    outputs = np.asarray(outputs, np.float64).reshape(-1, candidates.shape[1])
    targets = np.asarray(targets).reshape(-1)
    negatives = np.asarray(negatives).reshape(len(targets), -1)
    total, count = 0.0, 0
    for t in range(len(targets)):
        target = int(targets[t])
        if target == 0:
            continue
        positive = float(outputs[t] @ candidates[target]) / temperature
        logits = [positive]
        for negative in negatives[t]:
            if int(negative) == target:
                logits.append(ACCIDENTAL_HIT_LOGIT)
            else:
                logits.append(float(outputs[t] @ candidates[int(negative)]) / temperature)
        total += _logsumexp(np.array(logits)) - positive
        count += 1
    return (total / count if count else 0.0), count


def full_softmax_loss(outputs: np.ndarray, targets: np.ndarray, item_table: np.ndarray,
                      temperature: float) -> tuple[float, int]:
    """Mean over valid positions of the cross-entropy of the target among ALL items 1..V
    (cosine / temperature logits; row 0 is padding, never a class). Returns (mean, count)."""
    candidates = l2_normalize(np.asarray(item_table, np.float64))
    outputs = np.asarray(outputs, np.float64).reshape(-1, candidates.shape[1])
    targets = np.asarray(targets).reshape(-1)
    total, count = 0.0, 0
    for t in range(len(targets)):
        target = int(targets[t])
        if target == 0:
            continue
        logits = np.array([float(outputs[t] @ candidates[item]) / temperature for item in range(1, len(candidates))])
        total += _logsumexp(logits) - logits[target - 1]
        count += 1
    return (total / count if count else 0.0), count
