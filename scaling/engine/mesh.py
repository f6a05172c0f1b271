"""Device mesh from a spec, the one table of logical-axis rules, and shardings derived from it."""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from models.core import axes, tables
from scaling.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Parameters are stored sharded over fsdp (on their embed axis) and
# tensor; activations are split over data x fsdp on the batch axis. A mesh axis already used by
# an earlier dimension of the same array is skipped (so an activation's embed axis stays whole).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    (axes.BATCH, ("data", "fsdp")),
    (axes.EMBED, "fsdp"),
    (axes.VOCAB, "tensor"),
    # Catalogue tables (the item table) below tables.ROW_SHARDING_MIN_ROWS rows; from that size,
    # ROW_SHARDED_TABLES below.
    (axes.TABLE_ROWS, "tensor"),
    (axes.QKV, "tensor"),
    (axes.HEADS_DIM, "tensor"),
    (axes.MLP, "tensor"),
    (axes.LENGTH, None),
    (axes.POSITIONS, None),
    (axes.RELATIVE, None),
    (axes.ID_EDGES, None),
    # Experts over the data axis (GShard's expert parallelism): each data shard holds E / data
    # experts, tokens reach them by an all-to-all; their inner dimensions keep fsdp and tensor.
    (axes.EXPERT, "data"),  # a few ints per item, gathered by every beam: replicated
)

# Catalogue tables from tables.ROW_SHARDING_MIN_ROWS rows (padded by models/core/tables.py): rows split
# over every mesh axis (tables.row_axes), whatever the mesh, so the table, its gradient and its
# optimizer moments take 1 / devices of their size on each device; the embed axis stays whole.
ROW_SHARDED_TABLES = (axes.TABLE_ROWS,)


def parse_mesh_spec(spec: str, device_count: int) -> dict[str, int]:
    """{"data": d, "fsdp": f, "tensor": t} from "auto" or "data=2,fsdp=2,tensor=2" (missing = 1)."""
    if spec.strip() == "auto":
        return {"data": device_count, "fsdp": 1, "tensor": 1}
    sizes = {name: 1 for name in MESH_AXES}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in MESH_AXES:
            raise ConfigError(f"mesh spec {spec!r}: {part.strip()!r} is not AXIS=SIZE with AXIS in {', '.join(MESH_AXES)}")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"mesh spec {spec!r}: size of {name} must be a positive integer")
        sizes[name] = int(value)
    total = math.prod(sizes.values())
    if total != device_count:
        raise ConfigError(f"mesh spec {spec!r} needs {total} devices, but {device_count} are available")
    return sizes


def make_mesh(spec: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec, len(devices))
    shape = tuple(sizes[name] for name in MESH_AXES)
    try:
        device_grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, AssertionError, NotImplementedError):
        device_grid = np.asarray(devices).reshape(shape)
    check_tensor_within_processes(spec, device_grid)
    return Mesh(device_grid, MESH_AXES)


def check_tensor_within_processes(spec: str, device_grid: np.ndarray) -> None:
    """On GPU (and CPU) jobs of several processes, one per node, each `tensor` group must be the
    devices of one process: tensor parallelism all-reduces every layer and needs NVLink, while
    data and fsdp can cross nodes. (The grid's last axis is tensor, and devices are ordered by
    process, so this holds whenever tensor divides the devices per process.) TPU slices keep
    their interconnect across hosts and are not checked."""
    groups = device_grid.reshape(-1, device_grid.shape[-1])
    if groups.shape[1] == 1 or groups.flat[0].platform == "tpu":
        return
    for group in groups:
        processes = {device.process_index for device in group}
        if len(processes) > 1:
            per_process = sum(1 for device in device_grid.flat if device.process_index == group[0].process_index)
            raise ConfigError(f"mesh spec {spec!r}: a tensor group of {groups.shape[1]} devices spans processes "
                              f"{sorted(processes)}; keep tensor within a node ({per_process} devices per process) "
                              f"and put data / fsdp across nodes")


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The PartitionSpec the rules give `names`, leaving whole any dimension the mesh does not divide."""
    rules = dict(LOGICAL_AXIS_RULES)
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        target = rules.get(name) if name is not None else None
        if name in ROW_SHARDED_TABLES and not used:
            target = tables.row_axes(size, mesh) or target
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
        if mesh_axes and size % math.prod(mesh.shape[a] for a in mesh_axes) != 0:
            mesh_axes = ()
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
    return PartitionSpec(*spec)


def param_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree of (abstract) parameters boxed with logical names."""
    def one(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, logical_to_spec(leaf.names, leaf.value.shape, mesh))
        return NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def logical_names(boxed_tree: Any) -> dict[str, tuple]:
    """'path/to/param' -> its logical axis names (the t5x-style dump)."""
    flat = jax.tree_util.tree_flatten_with_path(boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else ()
        for path, leaf in flat
    }


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Rows split over data x fsdp; every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))

