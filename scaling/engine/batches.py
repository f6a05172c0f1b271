"""Host batches (numpy, a family's device fields) -> global jax.Arrays on the mesh."""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from scaling.engine.mesh import batch_sharding


def to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of every array as slices of global arrays split over data x fsdp."""
    return {name: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(value)), np.asarray(value))
            for name, value in batch.items()}
