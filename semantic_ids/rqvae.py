"""RQ-VAE (TIGER: Rajput et al., NeurIPS 2023, arXiv 2305.05065, section 3.1): an MLP encoder to a latent,
L residual codebooks of K codewords, a mirrored MLP decoder.

Loss per item = ||x - x_hat||^2 summed over features (summing, not averaging, is what keeps the
codebooks from collapsing) + sum over levels of ||sg[r_l] - e_l||^2 + beta ||r_l - sg[e_l]||^2;
the decoder sees z + sg[z_q - z] (straight-through). Codebooks start as residual k-means of the
first batch's latents; a codeword unused for `reset_every` steps restarts at a random residual of
the current batch at its level (dead-code reset).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semantic_ids import kmeans
from semantic_ids.residual_kmeans import Quantised, relative_error, residual_kmeans


@dataclasses.dataclass(frozen=True)
class RQVAEOptions:
    hidden: tuple[int, ...] = (512, 256, 128)
    latent: int = 32
    beta: float = 0.25
    steps: int = 3000
    batch_size: int = 1024
    learning_rate: float = 1e-3
    reset_every: int = 100
    log_every: int = 500

    def __post_init__(self) -> None:
        if any(h < 1 for h in self.hidden) or self.latent < 1:
            raise ValueError("hidden widths and latent must be positive")
        if self.steps < 0 or self.batch_size < 1 or self.reset_every < 0 or self.log_every < 1:
            raise ValueError("steps and reset_every must be >= 0, batch_size and log_every >= 1")
        if not (self.learning_rate > 0 and self.beta >= 0):
            raise ValueError("learning_rate must be positive and beta non-negative")


class MLP(nn.Module):
    widths: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if i < len(self.widths) - 1:
                x = nn.relu(x)
        return x


class Quantisation(NamedTuple):
    codes: jax.Array  # (n, L)
    quantised: jax.Array  # (n, latent): sum of the chosen codewords
    residuals: jax.Array  # (L, n, latent): the residual each level quantised
    codebook_loss: jax.Array  # (n,): sum over levels of the codebook + beta x commitment terms


def quantise(z: jax.Array, codebooks: jax.Array, beta: float) -> Quantisation:
    """Residual quantisation of latents z with codebooks (L, K, latent)."""
    residual, total = z, jnp.zeros_like(z)
    codes, residuals, loss = [], [], jnp.zeros(z.shape[0], z.dtype)
    for book in codebooks:
        code, _ = kmeans.nearest(jax.lax.stop_gradient(residual), jax.lax.stop_gradient(book))
        chosen = book[code]
        loss = loss + jnp.sum((jax.lax.stop_gradient(residual) - chosen) ** 2, -1) \
            + beta * jnp.sum((residual - jax.lax.stop_gradient(chosen)) ** 2, -1)
        codes.append(code)
        residuals.append(residual)
        total = total + chosen
        residual = residual - jax.lax.stop_gradient(chosen)
    return Quantisation(jnp.stack(codes, 1), total, jnp.stack(residuals), loss)


class RQVAE:
    """Pure functions over a params dict {"encoder", "decoder", "codebooks"}."""

    def __init__(self, input_dim: int, levels: int, k: int, options: RQVAEOptions):
        self.levels, self.k, self.options = levels, k, options
        self.encoder = MLP((*options.hidden, options.latent))
        self.decoder = MLP((*reversed(options.hidden), input_dim))
        self.input_dim = input_dim

    def init(self, key: jax.Array) -> dict:
        enc_key, dec_key = jax.random.split(key)
        return {"encoder": self.encoder.init(enc_key, jnp.zeros((1, self.input_dim)))["params"],
                "decoder": self.decoder.init(dec_key, jnp.zeros((1, self.options.latent)))["params"],
                "codebooks": jnp.zeros((self.levels, self.k, self.options.latent))}

    def encode(self, params: dict, x: jax.Array) -> jax.Array:
        return self.encoder.apply({"params": params["encoder"]}, x)

    def forward(self, params: dict, x: jax.Array) -> tuple[jax.Array, Quantisation]:
        z = self.encode(params, x)
        q = quantise(z, params["codebooks"], self.options.beta)
        straight_through = z + jax.lax.stop_gradient(q.quantised - z)
        return self.decoder.apply({"params": params["decoder"]}, straight_through), q

    def losses(self, params: dict, x: jax.Array) -> tuple[jax.Array, tuple]:
        x_hat, q = self.forward(params, x)
        reconstruction = jnp.sum((x - x_hat) ** 2, -1)
        return jnp.mean(reconstruction + q.codebook_loss), (jnp.mean(reconstruction), q)


class TrainState(NamedTuple):
    params: dict
    opt_state: Any
    usage: jax.Array  # (L, K) uses of every codeword since the last reset


def train_rqvae(x: np.ndarray, levels: int, k: int, seed: int, options: RQVAEOptions,
                mesh: Mesh | None = None, log: Callable[[str], None] | None = None) -> tuple[Quantised, dict]:
    """Train on the rows of x; (codes, reconstruction and codebooks of every row, a history with the
    relative reconstruction error at the k-means initialisation and after training)."""
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    batch = min(options.batch_size, n)  # the same on every mesh: the batch is split only when it divides
    model = RQVAE(x.shape[1], levels, k, options)
    init_key, data_key, reset_key = jax.random.split(jax.random.key(seed), 3)
    params = model.init(init_key)
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    rows_sharding = None if mesh is None or batch % mesh.size else NamedSharding(mesh, PartitionSpec(mesh.axis_names, None))
    data = jnp.asarray(x) if mesh is None else jax.device_put(x, replicated)

    def batch_rows(data: jax.Array, step: jax.Array) -> jax.Array:
        rows = jax.random.randint(jax.random.fold_in(data_key, step), (batch,), 0, n)  # with replacement
        picked = data[rows]
        return picked if rows_sharding is None else jax.lax.with_sharding_constraint(picked, rows_sharding)

    # Codebooks from residual k-means of the first batch's latents (at least 4 K distinct items).
    first_rows = np.asarray(jax.random.permutation(data_key, n)[:max(batch, min(n, 4 * k))])
    first_latents = np.asarray(jax.jit(model.encode)(params, x[first_rows]))
    init = residual_kmeans(first_latents, levels, k, seed, kmeans.KMeansOptions(), mesh=mesh)
    params = {**params, "codebooks": jnp.asarray(init.codebooks)}
    optimizer = optax.adam(options.learning_rate)
    state = TrainState(params, optimizer.init(params), jnp.zeros((levels, k), jnp.int32))

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: TrainState, data: jax.Array, step: jax.Array) -> tuple[TrainState, dict]:
        xb = batch_rows(data, step)
        (loss, (reconstruction, q)), grads = jax.value_and_grad(model.losses, has_aux=True)(state.params, xb)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        usage = state.usage + jax.vmap(lambda c: jnp.bincount(c, length=k))(q.codes.T).astype(jnp.int32)
        if options.reset_every:
            due = (step + 1) % options.reset_every == 0
            donors = _donors(jax.random.fold_in(reset_key, step), levels, k, batch)
            fresh = jnp.take_along_axis(q.residuals, donors[..., None], 1)  # (L, K, latent)
            dead = due & (usage == 0)
            params = {**params, "codebooks": jnp.where(dead[..., None], fresh, params["codebooks"])}
            usage = jnp.where(due, 0, usage)
        return TrainState(params, opt_state, usage), {"loss": loss, "reconstruction": reconstruction,
                                                      "used": jnp.mean(state.usage > 0, 1)}

    before = _encode_all(model, state.params, x)
    history = {"initial_recon_error": relative_error(x, before.reconstruction)}
    started = time.perf_counter()
    for step in range(options.steps):
        state, metrics = train_step(state, data, jnp.int32(step))
        if log is not None and ((step + 1) % options.log_every == 0 or step + 1 == options.steps):
            used = " ".join(f"{u:.2f}" for u in np.asarray(metrics["used"]))
            log(f"rqvae step {step + 1}/{options.steps}: loss {float(metrics['loss']):.4f}, "
                f"reconstruction {float(metrics['reconstruction']):.4f}, codes used since reset {used}, "
                f"{time.perf_counter() - started:.1f}s")
    result = _encode_all(model, state.params, x)
    history["final_recon_error"] = relative_error(x, result.reconstruction)
    history["steps"] = options.steps
    return result, history


def _donors(key: jax.Array, levels: int, k: int, batch: int) -> jax.Array:
    """(levels, k) batch rows whose residuals restart dead codewords: distinct within a level
    when the batch has at least k rows."""
    keys = jax.random.split(key, levels)
    if k <= batch:
        return jax.vmap(lambda level_key: jax.random.permutation(level_key, batch)[:k])(keys)
    return jax.vmap(lambda level_key: jax.random.randint(level_key, (k,), 0, batch))(keys)


def _encode_all(model: RQVAE, params: dict, x: np.ndarray, chunk: int = 65536) -> Quantised:
    """Codes and reconstructions of every row, chunk by chunk (one compiled encoder per model)."""
    codes, reconstruction = [], []
    for start in range(0, x.shape[0], chunk):
        c, r = _encoder_of(model)(params, jnp.asarray(x[start:start + chunk]))
        codes.append(np.asarray(c))
        reconstruction.append(np.asarray(r))
    return Quantised(np.concatenate(codes).astype(np.int32), np.concatenate(reconstruction),
                     np.asarray(params["codebooks"]))


@functools.lru_cache(maxsize=4)
def _encoder_of(model: RQVAE) -> Callable:
    def run(params: dict, rows: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = model.encode(params, rows)
        q = quantise(z, params["codebooks"], model.options.beta)
        return q.codes, model.decoder.apply({"params": params["decoder"]}, q.quantised)

    return jax.jit(run)
