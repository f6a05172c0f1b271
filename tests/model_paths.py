"""Which paths the model tests run: the CPU's, or with $SCALING_LAB_ACCELERATOR_PATHS=1 what a GPU
or TPU runs (tests/conftest.py). The library then traces the plain autodiff forms and takes one
micro-batch per step (models.core.family.accelerator_paths); the model configs the tests build here
compute in bfloat16, and their float32 tolerances widen to BF16_TOL."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from models.core.config import ModelConfig
from models.core.family import FamilyConfig, accelerator_paths

ACCELERATOR = accelerator_paths()
COMPUTE_DTYPE = "bfloat16" if ACCELERATOR else "float32"

# bf16 keeps 8 significant bits, so one rounding is off by up to 2^-9 relative; the tests' models
# (1-2 blocks, width 8-16) round their activations a few times on the way to an output or a loss,
# measured off by up to 0.007 (unit-vector outputs, entry by entry) and 0.1% (losses). 3% leaves
# room for a few more roundings.
BF16_TOL = 0.03
# A gradient sums terms of both signs (the softmax, normalisation and residual backward passes),
# each off by a bf16 rounding: its error follows the terms, not their sum. Measured per parameter
# array at up to 7% of its norm (attention and relative-bias gradients, tiny models near their
# init, where attention is near uniform and the terms nearly cancel); twice that passes.
BF16_GRAD_TOL = 5 * BF16_TOL


def model_config(**fields: Any) -> FamilyConfig:
    """ModelConfig(**fields) computing in COMPUTE_DTYPE unless fields name one."""
    return ModelConfig(**{"compute_dtype": COMPUTE_DTYPE, **fields})


def tolerance(float32: float) -> float:
    """A float32 test's tolerance of outputs and losses, widened to BF16_TOL under the
    accelerator paths."""
    return max(float32, BF16_TOL) if ACCELERATOR else float32


def gradient_atol(float32: float, gradient: Any) -> float:
    """A float32 test's absolute tolerance for one entry of a parameter array's `gradient`, or for
    its slope along a random N(0, I) direction; under the accelerator paths at least
    BF16_GRAD_TOL |gradient|: an error e within that bound has entries of at most |e|, and slopes
    spread as N(0, |e|^2)."""
    if not ACCELERATOR:
        return float32
    return max(float32, BF16_GRAD_TOL * float(np.linalg.norm(np.asarray(gradient, np.float64))))


def assert_gradient_close_in_bf16(got: Any, want: Any, err_msg: str = "") -> None:
    """|got - want| <= BF16_GRAD_TOL |want| (Euclidean norms of one parameter array's gradient)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    error, norm = float(np.linalg.norm(got - want)), float(np.linalg.norm(want))
    assert error <= BF16_GRAD_TOL * norm, \
        f"{err_msg}: |got - want| = {error:.3g} > {BF16_GRAD_TOL} x |want| = {norm:.3g}"


def assert_gradients_close(got: Any, want: Any, rtol: float, atol: float) -> None:
    """Two gradient trees equal: to float32 tolerances, or array by array to BF16_GRAD_TOL under
    the accelerator paths."""
    if ACCELERATOR:
        jax.tree.map(assert_gradient_close_in_bf16, got, want)
    else:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), got, want)
