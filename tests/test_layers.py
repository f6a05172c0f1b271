"""Hand-written backward passes equal autodiff of the plain formulas (the kernels forced on, on
any backend and on any paths)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.core.layers import add_bias, force_hand_written_kernels, layer_norm


def plain_layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.var(x, axis=-1, keepdims=True) + eps)


def check_same_value_and_gradients(custom, plain, *args) -> None:
    cotangent = jax.random.normal(jax.random.key(9), jnp.shape(plain(*args)))
    argnums = tuple(range(len(args)))
    with force_hand_written_kernels(True):
        np.testing.assert_allclose(custom(*args), plain(*args), rtol=1e-5, atol=1e-6)
        got = jax.grad(lambda *a: jnp.sum(custom(*a) * cotangent), argnums=argnums)(*args)
    want = jax.grad(lambda *a: jnp.sum(plain(*a) * cotangent), argnums=argnums)(*args)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_layer_norm_matches_the_formula_with_gradients() -> None:
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 5, 8))  # an offset mean, as residual streams have
    check_same_value_and_gradients(layer_norm, plain_layer_norm, x)


@pytest.mark.slow
@pytest.mark.parametrize("bias_shape", [(8,), (5, 8)])
def test_add_bias_sums_its_gradient_over_the_broadcast_axes(bias_shape) -> None:
    y = jax.random.normal(jax.random.key(1), (2, 3, 5, 8))
    bias = jax.random.normal(jax.random.key(2), bias_shape)
    check_same_value_and_gradients(add_bias, lambda y, b: y + b, y, bias)


def test_l2_normalize_of_a_zero_vector_has_a_finite_gradient() -> None:
    from models.core.layers import l2_normalize

    x = jnp.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    grad = jax.grad(lambda v: jnp.sum(l2_normalize(v) * jnp.array([1.0, 2.0, 3.0])))(x)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(l2_normalize(x), [[0.0, 0.0, 0.0], [0.6, 0.8, 0.0]], rtol=1e-6)
