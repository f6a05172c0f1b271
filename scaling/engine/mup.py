"""µP's per-parameter learning rates (Tensor Programs V, Table 3, Adam), read from logical axes.

A parameter's kind follows from which of its dimensions grow with width (the logical axes in
WIDTH_AXES): two or more -> a hidden weight, learning rate / m; one, and it is the fan-in of a
fixed-size output (the last axis is fixed) -> an output weight, / m; otherwise (input tables
whose rows are items, tokens or positions, biases, norm gains, bias tables) -> x 1. The forward
multipliers are the families' (models/core/parametrization.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import optax

from models.core import axes

WIDTH_AXES = frozenset({axes.EMBED, axes.QKV, axes.HEADS_DIM, axes.MLP})


def kind(names: tuple) -> str:
    """"hidden", "output" or "vector" for a parameter with these logical axis names."""
    wide = [name in WIDTH_AXES for name in names]
    if sum(wide) >= 2:
        return "hidden"
    if sum(wide) == 1 and len(names) >= 2 and not wide[-1]:
        return "output"
    return "vector"


def learning_rate_multipliers(boxed_params: Any, width_multiplier: float) -> Any:
    """A tree like the parameters: 1 / m for hidden and output weights, 1 for the rest."""
    def one(leaf: Any) -> float:
        names = tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else ()
        return 1.0 / width_multiplier if kind(names) in ("hidden", "output") else 1.0
    return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def scale_updates(multipliers: Any) -> optax.GradientTransformation:
    """Multiply each parameter's update by its multiplier (after AdamW: a per-group learning rate)."""
    def init(params: Any) -> optax.EmptyState:
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        return jax.tree.map(lambda update, multiplier: update * multiplier, updates, multipliers), state

    return optax.GradientTransformation(init, update)
