"""Residual k-means (RQ-Kmeans, OneRec): level l fits K centres to the residuals R_l, assigns every
item to one, and passes R_{l+1} = R_l - c_assigned on; balanced levels cap every cluster at
ceil(n / K). Rows are spread over every device of a mesh when one is given."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semantic_ids import kmeans


class Quantised(NamedTuple):
    codes: np.ndarray  # (n, L) int32
    reconstruction: np.ndarray  # (n, d) float32: what the codes decode to, in the input space
    codebooks: np.ndarray  # (L, K, width)


def place_rows(x: np.ndarray, mesh: Mesh | None) -> tuple[jax.Array, jax.Array]:
    """(x padded with zero rows to a multiple of the mesh size and sharded by rows, weights that
    are 1 for real rows and 0 for padding)."""
    n = x.shape[0]
    devices = 1 if mesh is None else mesh.size
    padded = -(-n // devices) * devices
    rows = np.zeros((padded, x.shape[1]), np.float32)
    rows[:n] = x
    weights = (np.arange(padded) < n).astype(np.float32)
    if mesh is None:
        return jnp.asarray(rows), jnp.asarray(weights)
    spec = PartitionSpec(mesh.axis_names)
    return (jax.device_put(rows, NamedSharding(mesh, PartitionSpec(mesh.axis_names, None))),
            jax.device_put(weights, NamedSharding(mesh, spec)))


def relative_error(x: np.ndarray, reconstruction: np.ndarray) -> float:
    """sum ||x - x_hat||^2 / sum ||x||^2."""
    x = np.asarray(x, np.float64)
    return float(np.sum((x - reconstruction) ** 2) / max(np.sum(x**2), 1e-30))


@jax.jit
def _subtract_assigned(residual: jax.Array, centres: jax.Array, assignment: jax.Array) -> jax.Array:
    return residual - centres[jnp.maximum(assignment, 0)] * (assignment >= 0)[:, None]


def residual_kmeans(x: np.ndarray, levels: int, k: int, seed: int, options: kmeans.KMeansOptions,
                    mesh: Mesh | None = None, log=None) -> Quantised:
    """Codes of L = `levels` residual k-means levels of K = `k` centres each (level l uses the key
    fold_in(key(seed), l))."""
    n = x.shape[0]
    residual, weights = place_rows(np.asarray(x, np.float32), mesh)
    codes, codebooks = [], []
    for level in range(levels):
        fitted = kmeans.fit(residual, weights, k, jax.random.fold_in(jax.random.key(seed), level), options, rows=n)
        residual = _subtract_assigned(residual, fitted.centres, fitted.assignment)
        codes.append(np.asarray(fitted.assignment)[:n])
        codebooks.append(np.asarray(fitted.centres))
        if log is not None:
            log(f"level {level + 1}/{levels}: inertia {float(fitted.inertia):.4g}, "
                f"{len(np.unique(codes[-1]))}/{k} codes used")
    reconstruction = np.asarray(x, np.float32) - np.asarray(residual)[:n]
    return Quantised(np.stack(codes, 1).astype(np.int32), reconstruction, np.stack(codebooks))
