"""Meshes, shardings, and putting host data on devices.

One `Mesh` with axes `data`, `fsdp`, `model` spans the devices of all processes. Batches are
split along `data` and `fsdp`; the train state is replicated unless sharding rules
(`mtl.sharding`) split it over `fsdp` or `model`. Each process hands in only its own rows of a
batch and `jax.make_array_from_process_local_data` assembles the global array.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mtl.errors import ConfigError, unknown_name

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # examples are split over these; `model` devices share theirs


def make_mesh(mesh_config: Mapping[str, int] | None = None) -> Mesh:
    """A mesh with axes `data`, `fsdp` and `model`; `data=-1` (the default) takes the rest.

    `fsdp` and `model` (default 1) are for trunks too big for one device: sharding rules
    (`mtl.sharding`) split parameters over them. The batch is split over `data` and `fsdp`.
    `model` is the innermost axis, so on TPUs and GPUs it spans the best-connected devices.
    """
    mesh_config = dict(mesh_config or {})
    unknown = sorted(set(mesh_config) - set(AXES))
    if unknown:
        raise unknown_name("mesh axis", unknown[0], AXES, field=f"mesh.{unknown[0]}")
    fsdp, model = int(mesh_config.get("fsdp", 1)), int(mesh_config.get("model", 1))
    data = int(mesh_config.get("data", -1))
    count = jax.device_count()
    if fsdp < 1 or model < 1 or count % (fsdp * model):
        raise ConfigError(
            f"config mesh.fsdp={fsdp} x mesh.model={model} does not divide the {count} "
            "available devices."
        )
    if data == -1:
        data = count // (fsdp * model)
    if data < 1 or data * fsdp * model > count or count % (data * fsdp * model):
        raise ConfigError(
            f"config mesh.data={data} x fsdp={fsdp} x model={model} does not fit the {count} "
            "available devices; use data=-1 for all that remain."
        )
    # Auto axes: XLA propagates shardings through the step (jax.make_mesh now defaults to
    # Explicit axes, where ops such as vmap-ed convolutions must be annotated by hand).
    return jax.make_mesh(
        (data, fsdp, model),
        AXES,
        axis_types=(AxisType.Auto,) * 3,
        devices=jax.devices()[: data * fsdp * model],
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over `data` (and `fsdp`, if the mesh has it), the rest whole."""
    return NamedSharding(mesh, P(BATCH_AXES if "fsdp" in mesh.shape else "data"))


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    """The global batch must split evenly over data-parallel devices and processes."""
    shards = mesh.shape["data"] * mesh.shape.get("fsdp", 1)
    if batch_size % shards or batch_size % jax.process_count():
        raise ConfigError(
            f"config {field}={batch_size} must be divisible by the {shards} data-parallel "
            f"devices and {jax.process_count()} processes."
        )


def process_rows(global_rows: int, sharding: NamedSharding | None = None) -> slice:
    """This process's slice of a global batch of `global_rows` examples.

    With a `sharding`, the rows its local devices hold (a process whose devices all lie on one
    `model` group gets the rows of that group); without, an even split over processes.
    """
    if sharding is not None:
        index = sharding.addressable_devices_indices_map((global_rows,)).values()
        starts = [rows[0].indices(global_rows)[0] for rows in index]
        stops = [rows[0].indices(global_rows)[1] for rows in index]
        return slice(min(starts), max(stops))
    per_process = global_rows // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def to_global(local_batch: Any, sharding: NamedSharding, global_rows: int | None = None) -> Any:
    """Assembles global arrays from each process's rows (one process: the whole batch).

    `global_rows` is needed only when processes hold overlapping rows (see `process_rows`).
    """

    def one(a):
        a = np.asarray(a)
        shape = None if global_rows is None else (global_rows, *a.shape[1:])
        return jax.make_array_from_process_local_data(sharding, a, shape)

    return jax.tree_util.tree_map(one, local_batch)
