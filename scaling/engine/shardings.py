"""Shardings of the whole train state: parameters by the rules, optimizer moments like their parameter."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scaling.engine.mesh import param_shardings


def _keys(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def state_shardings(abstract_state: Any, boxed_params: Any, mesh: Mesh) -> Any:
    """Shardings for {"params", "opt_state", "step"}: an optimizer leaf whose path ends with a
    parameter's path (Adam's mu / nu) is sharded like that parameter (one of fewer dimensions,
    like its leading ones); other leaves replicate."""
    by_param = param_shardings(boxed_params, mesh)
    flat = jax.tree_util.tree_flatten_with_path(by_param)[0]
    table = {_keys(path): sharding for path, sharding in flat}
    replicated = NamedSharding(mesh, PartitionSpec())

    def for_leaf(path: tuple, leaf: Any) -> NamedSharding:
        keys = _keys(path)
        if keys[0] == "params":
            return table[keys[1:]]
        for start in range(1, len(keys)):
            if keys[start:] in table:
                sharding = table[keys[start:]]
                if len(sharding.spec) > leaf.ndim:  # a per-row statistic (row-wise Adagrad): the rows' layout
                    return NamedSharding(mesh, PartitionSpec(*sharding.spec[:leaf.ndim]))
                return sharding
        return replicated

    return jax.tree_util.tree_map_with_path(for_leaf, abstract_state)
