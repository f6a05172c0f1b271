"""The encoder-decoder family against a NumPy reference of the same model: training loss and its
gradients, and the exact scorer's ranking against scoring every item one at a time."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.core import family as families
from models.encdec.model import EncDecModel, vocabulary_codes
from models.encdec.network import EncDecNetwork, user_tokens
from tests.model_paths import gradient_atol, model_config, tolerance

NUM_ITEMS = 12
ROW_LEN = 7
VARIANTS = {
    "rmsnorm-relative": dict(norm="rmsnorm", positions="relative", activation="relu"),
    "layernorm-learned": dict(norm="layernorm", positions="learned", activation="gelu"),
}


def tiny_config(**variant):
    return model_config(family="encdec", d_model=8, heads=2, d_ff=16, encoder_blocks=1, decoder_blocks=2,
                       dropout=0.0, history_items=3, user_buckets=5, ids_levels=2, ids_codebook=4,
                       relative_buckets=8, relative_max_distance=16, score_chunk=5, **variant)


def tiny_codes() -> np.ndarray:
    rng = np.random.default_rng(0)
    tuples = np.array([(a, b) for a in range(4) for b in range(4)])[rng.permutation(16)[:NUM_ITEMS]]
    tuples[5] = tuples[2]  # one collision: the third code tells them apart
    collision = np.zeros(NUM_ITEMS, np.int64)
    collision[5] = 1
    return np.concatenate([tuples, collision[:, None]], 1)


def tiny_model(variant: str) -> EncDecModel:
    config = tiny_config(**VARIANTS[variant])
    codes = vocabulary_codes(tiny_codes(), config)
    return EncDecModel(EncDecNetwork(config), config, NUM_ITEMS, codes, {"method": "test"})


def tiny_batch(config) -> dict[str, np.ndarray]:
    """Two rows: one user each, and a row holding two users (packed) with padding."""
    items = np.array([[3, 1, 4, 1, 5, 9, 2], [6, 5, 3, 5, 8, 0, 0]], np.int32)
    items = np.where(items > NUM_ITEMS, items % NUM_ITEMS + 1, items)
    segments = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 0, 0]], np.int32)
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 0, 1, 0, 0]], np.int32)
    users = np.array([[4, 4, 4, 4, 4, 4, 4], [7, 7, 7, 9, 9, -1, -1]], np.int32)
    targets = np.zeros_like(items)
    for r in range(2):
        for t in range(ROW_LEN - 1):
            if segments[r, t] and segments[r, t + 1] == segments[r, t]:
                targets[r, t] = items[r, t + 1]
    targets[0, 6] = 7  # the last token's target (the next item of the window)
    return {"items": items, "targets": targets, "segment_ids": segments, "positions": positions,
            "user_tokens": user_tokens(users, config), "users": users}


# ---- the NumPy reference ---------------------------------------------------------------------------


def ref_buckets(q_len: int, k_len: int, bidirectional: bool, buckets: int, max_distance: int) -> np.ndarray:
    out = np.zeros((q_len, k_len), int)
    for i in range(q_len):
        for j in range(k_len):
            n, bucket, size = i - j, 0, buckets
            if bidirectional:
                size //= 2
                if n < 0:
                    bucket += size
                n = abs(n)
            else:
                n = max(n, 0)
            exact = size // 2
            if n < exact:
                bucket += n
            else:
                bucket += min(exact + int(math.log(n / exact) / math.log(max_distance / exact) * (size - exact)), size - 1)
            out[i, j] = bucket
    return out


def ref_norm(x, p, kind):
    if kind == "layernorm":
        c = x - x.mean(-1, keepdims=True)
        return c / np.sqrt((c**2).mean(-1, keepdims=True) + 1e-6) * p["scale"] + p["bias"]
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * p["scale"]


def ref_attention(x, source, p, mask, bias, heads):
    def split(t):
        return t.reshape(t.shape[0], heads, -1).transpose(1, 0, 2)  # (H, len, e)
    q, k, v = split(x @ p["q"]), split(source @ p["k"]), split(source @ p["v"])
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    scores = np.where(mask, scores, -1e9)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights = np.where(mask, weights / weights.sum(-1, keepdims=True), 0.0)
    return (weights @ v).transpose(1, 0, 2).reshape(x.shape[0], -1) @ p["o"]


def ref_ffn(x, p, activation):
    h = x @ p["wi"]
    h = np.maximum(h, 0) if activation == "relu" else 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return h @ p["wo"]


def ref_log_probs(params, config, encoder_tokens, decoder_tokens):
    """(T, K) level log-probabilities of one example."""
    table = params["token_embedding"]
    s, t = len(encoder_tokens), len(decoder_tokens)
    real = encoder_tokens != 0
    x = table[encoder_tokens]
    y = table[decoder_tokens]
    enc_bias = dec_bias = None
    if config.positions == "learned":
        x = x + params["encoder_position_embedding"][:s]
        y = y + params["decoder_position_embedding"][:t]
    else:
        enc_bias = params["encoder_relative_bias"][ref_buckets(s, s, True, 8, 16)].transpose(2, 0, 1)
        dec_bias = params["decoder_relative_bias"][ref_buckets(t, t, False, 8, 16)].transpose(2, 0, 1)
    for i in range(config.encoder_blocks):
        p = params[f"encoder_{i}"]
        x = x + ref_attention(ref_norm(x, p["norm_attention"], config.norm), ref_norm(x, p["norm_attention"], config.norm),
                              p["self_attention"], real[None, None, :] & real[None, :, None], enc_bias, config.heads)
        x = x + ref_ffn(ref_norm(x, p["norm_ffn"], config.norm), p["ffn"], config.activation)
    memory = ref_norm(x, params["encoder_norm"], config.norm)
    causal = np.tril(np.ones((t, t), bool))[None]
    for i in range(config.decoder_blocks):
        p = params[f"decoder_{i}"]
        normed = ref_norm(y, p["norm_self"], config.norm)
        y = y + ref_attention(normed, normed, p["self_attention"], causal, dec_bias, config.heads)
        y = y + ref_attention(ref_norm(y, p["norm_cross"], config.norm), memory, p["cross_attention"],
                              real[None, None, :], None, config.heads)
        y = y + ref_ffn(ref_norm(y, p["norm_ffn"], config.norm), p["ffn"], config.activation)
    y = ref_norm(y, params["decoder_norm"], config.norm)
    k = config.ids_codebook
    logits = np.stack([y[j] @ table[2 + j * k: 2 + (j + 1) * k].T for j in range(t)]) / math.sqrt(config.d_model)
    return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)


def ref_example_tokens(model, batch, r, t):
    """(encoder ids, decoder ids, per-level targets) of the example at row r, position t."""
    config, codes = model.config, model.codes
    history = []
    for offset in range(config.history_items - 1, -1, -1):
        j = t - offset
        ok = j >= 0 and batch["segment_ids"][r, j] == batch["segment_ids"][r, t] and batch["items"][r, j] > 0
        history.append(batch["items"][r, j] if ok else 0)
    encoder = np.concatenate([[batch["user_tokens"][r, t]], codes[history].ravel()])
    target_ids = codes[batch["targets"][r, t]]
    decoder = np.concatenate([[1], target_ids[:-1]])
    local = target_ids - 2 - np.arange(config.id_length) * config.ids_codebook
    return encoder, decoder, local


def ref_loss(params, model, batch):
    total, count = 0.0, 0
    for r in range(batch["items"].shape[0]):
        for t in range(ROW_LEN):
            if batch["targets"][r, t] > 0:
                encoder, decoder, local = ref_example_tokens(model, batch, r, t)
                log_probs = ref_log_probs(params, model.config, encoder, decoder)
                total -= sum(log_probs[j, local[j]] for j in range(len(local)))
                count += len(local)
    return total, count


def as_float64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.fixture(scope="module", params=list(VARIANTS))
def fixture(request):
    model = tiny_model(request.param)
    batch = tiny_batch(model.config)
    fields = families.get("encdec").train_fields(model.config)
    device = {k: jnp.asarray(batch[k]) for k in fields}
    params = nn.unbox(model.init(jax.random.key(0), device))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape), params)  # off init
    return model, batch, device, params


def test_loss_equals_the_numpy_reference(fixture):
    model, batch, device, params = fixture
    loss_sum, count, _ = model.loss_sums(params, device, jax.random.key(1))
    expected, expected_count = ref_loss(as_float64(params), model, batch)
    assert float(count) == expected_count == (7 + 3) * 3  # 7 targets in the full row, 2 + 1 in the packed one
    assert float(loss_sum) == pytest.approx(expected, rel=tolerance(1e-5))


@pytest.mark.slow
def test_gradients_equal_finite_differences_of_the_reference(fixture):
    model, batch, device, params = fixture
    grads = jax.grad(lambda p: model.loss_sums(p, device, jax.random.key(1))[0])(params)
    reference = as_float64(params)
    rng = np.random.default_rng(0)
    leaves = [("token_embedding",), ("encoder_0", "self_attention", "q"), ("decoder_1", "cross_attention", "v"),
              ("decoder_0", "ffn", "wi"), ("encoder_norm", "scale")]
    for path in leaves:
        leaf, grad = reference, grads
        for key in path:
            leaf, grad = leaf[key], grad[key]
        for _ in range(3):
            index = tuple(rng.integers(0, n) for n in leaf.shape)
            if path == ("token_embedding",):
                index = (int(rng.choice([1, 2 + 5, 2 + 4 * 3 + 2])), index[1])  # BOS, a code, a user token
            eps = 1e-5
            leaf[index] += eps
            up = ref_loss(reference, model, batch)[0]
            leaf[index] -= 2 * eps
            down = ref_loss(reference, model, batch)[0]
            leaf[index] += eps
            expected = (up - down) / (2 * eps)
            assert float(grad[index]) == pytest.approx(expected, rel=2e-3, abs=gradient_atol(2e-4, grad)), (path, index)


@pytest.mark.slow
def test_exact_scorer_ranks_like_scoring_each_item_alone(fixture):
    model, batch, device, params = fixture
    eval_batch = {k: device[k] for k in ("items", "segment_ids", "positions", "user_tokens")}
    eval_batch.update(eval_position=jnp.array([6, 4]), eval_target=jnp.array([7, 2]), eval_valid=jnp.array([True, True]))
    eval_batch["segment_ids"] = jnp.asarray(np.where(batch["segment_ids"] > 0, 1, 0).astype(np.int32))  # one user per row
    eval_batch["positions"] = jnp.asarray(np.tile(np.arange(ROW_LEN, dtype=np.int32), (2, 1)))
    out = jax.jit(model.evaluate)(params, eval_batch)
    reference = as_float64(params)
    for r, (position, target) in enumerate([(6, 7), (4, 2)]):
        local_batch = {k: np.asarray(v) for k, v in eval_batch.items()}
        local_batch["targets"] = np.zeros((2, ROW_LEN), np.int32)
        scores = np.full(NUM_ITEMS + 1, -np.inf)
        for item in range(1, NUM_ITEMS + 1):
            local_batch["targets"][r, position] = item
            encoder, decoder, local = ref_example_tokens(model, local_batch, r, position)
            log_probs = ref_log_probs(reference, model.config, encoder, decoder)
            scores[item] = sum(log_probs[j, local[j]] for j in range(len(local)))
        history = set(np.asarray(eval_batch["items"])[r]) - {0, target}
        higher = sum(1 for i in range(1, NUM_ITEMS + 1) if i not in history and scores[i] > scores[target])
        assert int(out["rank"][r]) == 1 + higher
        assert float(out["loss"][r]) == pytest.approx(-scores[target] / 3, rel=tolerance(1e-4))
