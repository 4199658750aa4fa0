"""Orbax checkpoints of the whole train state: async saves, keep-latest-N, resume.

The train state is one pytree (parameters, optimizer and method state, step, RNG key). It is
saved every `every` steps and at the end, asynchronously, keeping the newest `keep`. Orbax
writes each step into a temporary directory and renames it once complete, so a run killed in
the middle of a save resumes from the newest complete checkpoint, never from a partial one.
Restoring goes straight into the shardings of a template state.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from mtl.errors import ConfigError

PyTree = Any


def make_manager(directory: str, *, every: int, keep: int) -> ocp.CheckpointManager:
    """A manager that saves every `every` steps (when asked), keeps `keep`, writes async."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=every,
        enable_async_checkpointing=True,
        create=True,
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def abstract_like(state: PyTree) -> PyTree:
    """Shapes, dtypes and shardings of `state`, as Orbax's restore target."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)


def restore_latest(manager: ocp.CheckpointManager, template: PyTree) -> PyTree | None:
    """The newest complete checkpoint restored into `template`'s shardings, or None."""
    step = manager.latest_step()
    if step is None:
        return None
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_like(template)))


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Starts an async save of `state` at `step` if due (or `force`); returns whether it did."""
    if force and step in manager.all_steps():
        return False
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def guard_config(workdir: str, config: ml_collections.ConfigDict, keys: tuple[str, ...]) -> None:
    """Records `config` in `workdir/config.json`; refuses to resume under a different model.

    Checkpoints in a workdir belong to one model. If the fields in `keys` (model, tasks, ...)
    differ from those recorded there, restoring would fail deep inside Orbax or, worse, load
    weights into the wrong places, so this stops first and names the fields.
    """
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changed = [k for k in keys if saved.get(k) != current.get(k)]
        if changed:
            raise ConfigError(
                f"{workdir} holds checkpoints of a run whose config differs in: "
                f"{', '.join(changed)}. Use a new --workdir, or the same config to resume. "
                "Nothing in the workdir was changed."
            )
        return
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
