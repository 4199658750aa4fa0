"""Meshes, shardings, and putting host data on devices.

One `Mesh` with a `data` axis spans the devices of all processes. Batches are split along
`data`; the train state is replicated. Each process hands in only its own rows of a batch and
`jax.make_array_from_process_local_data` assembles the global array.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtl.errors import ConfigError


def make_mesh(mesh_config: Mapping[str, int] | None = None) -> Mesh:
    """A mesh with a `data` axis; `data=-1` (the default) takes every device."""
    data = int((mesh_config or {}).get("data", -1))
    count = jax.device_count()
    if data == -1:
        data = count
    if data < 1 or data > count or count % data:
        raise ConfigError(
            f"config mesh.data={data} does not fit the {count} available devices; use -1 for all."
        )
    # Auto axes: XLA propagates shardings through the step (jax.make_mesh now defaults to
    # Explicit axes, where ops such as vmap-ed convolutions must be annotated by hand).
    return jax.make_mesh(
        (data,), ("data",), axis_types=(AxisType.Auto,), devices=jax.devices()[:data]
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over `data`, the rest whole."""
    return NamedSharding(mesh, P("data"))


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    """The global batch must split evenly over data-parallel devices and processes."""
    shards = mesh.shape["data"]
    if batch_size % shards or batch_size % jax.process_count():
        raise ConfigError(
            f"config {field}={batch_size} must be divisible by the {shards} data-parallel "
            f"devices and {jax.process_count()} processes."
        )


def process_rows(global_rows: int) -> slice:
    """This process's slice of a global batch of `global_rows` examples."""
    per_process = global_rows // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def to_global(local_batch: Any, sharding: NamedSharding) -> Any:
    """Assembles global arrays from each process's rows (one process: the whole batch)."""
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_batch
    )
