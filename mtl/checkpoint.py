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
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mtl import workdir_files
from mtl.errors import CheckpointError, ConfigError
from mtl.models.architectures import HARD_SHARING

PyTree = Any


def make_manager(directory: str, *, every: int, keep: int) -> ocp.CheckpointManager:
    """A manager that saves every `every` steps (when asked), keeps `keep`, writes async."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=every,
        enable_async_checkpointing=True,
        create=True,
        # A step folder left half written by a killed run (SIGKILL, a second Ctrl-C) is removed
        # when the next run opens the manager; the workdir lock makes that run the only writer.
        cleanup_tmp_directories=True,
    )
    # The handler is named so that a fresh manager can read a checkpoint's metadata (array
    # shapes) before restoring: that is how a different model is caught and listed.
    return ocp.CheckpointManager(
        _absolute(directory), options=options, item_handlers=ocp.StandardCheckpointHandler()
    )


def abstract_like(state: PyTree) -> PyTree:
    """Shapes, dtypes and shardings of `state`, as Orbax's restore target."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)


def restore_latest(manager: ocp.CheckpointManager, template: PyTree) -> PyTree | None:
    """The newest complete checkpoint restored into `template`'s shardings, or None.

    Raises `ConfigError` listing the mismatched arrays if the checkpoint holds a different
    model, and `CheckpointError` if it cannot be read; neither touches the files.
    """
    step = manager.latest_step()
    if step is None:
        return None
    where = os.path.join(str(manager.directory), str(step))
    try:
        saved = manager.item_metadata(step)
    except Exception as e:  # noqa: BLE001 - any unreadable metadata means the same to the user
        raise _unreadable(manager, step, where, e) from e
    mismatches = mismatched_arrays(getattr(saved, "tree", saved), template)
    if mismatches:
        listed = "\n  ".join(mismatches[:_MAX_LISTED])
        more = len(mismatches) - _MAX_LISTED
        raise ConfigError(
            f"The checkpoint {where} holds a different model than the config builds "
            f"({len(mismatches)} mismatched array(s)):\n  {listed}"
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\nUse a new --workdir, or the config that wrote it. Nothing was changed."
        )
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract_like(template)))
    except Exception as e:  # noqa: BLE001
        raise _unreadable(manager, step, where, e) from e


def latest_step(directory: str) -> int | None:
    """The newest complete checkpoint's step in `directory`, or None; creates nothing."""
    if not epath.Path(directory).exists():
        return None
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(_absolute(directory), options=options) as manager:
        return manager.latest_step()


def read_on_host(directory: str, step: int | None = None) -> PyTree:
    """A checkpoint's arrays as NumPy on this host, whatever mesh or process count wrote it.

    For inspection and tests: each array is read whole onto one local device (RNG keys come
    back as their raw uint32 data). `step` defaults to the newest complete one.
    """
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(
        _absolute(directory), options=options, item_handlers=ocp.StandardCheckpointHandler()
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No complete checkpoint in {directory}.")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            manager.item_metadata(step).tree,
        )
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    return jax.tree_util.tree_map(_to_numpy, restored)


def _to_numpy(x: jax.Array) -> np.ndarray:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def mismatched_arrays(saved: PyTree, template: PyTree) -> list[str]:
    """`path: what differs` for each array that is missing, extra or of another shape/dtype.

    `saved` is the checkpoint's metadata tree (leaves with `shape` and `dtype`). RNG keys are
    compared by path only: Orbax stores them as their raw uint32 data.
    """
    want = _leaves_by_path(template)
    have = _leaves_by_path(saved)
    # Parameters first: optimizer moments and statistics only repeat their mismatch.
    order = lambda paths: sorted(paths, key=lambda p: (not p.startswith("params/"), p))  # noqa: E731
    out = [f"{p}: in the model, not in the checkpoint" for p in order(set(want) - set(have))]
    out += [f"{p}: in the checkpoint, not in the model" for p in order(set(have) - set(want))]
    for path in order(set(want) & set(have)):
        w, h = want[path], have[path]
        if jax.dtypes.issubdtype(w.dtype, jax.dtypes.prng_key):
            continue
        if tuple(w.shape) != tuple(h.shape) or w.dtype != h.dtype:
            out.append(
                f"{path}: checkpoint {tuple(h.shape)} {h.dtype}, model {tuple(w.shape)} {w.dtype}"
            )
    return out


def _leaves_by_path(tree: PyTree) -> dict[str, Any]:
    from mtl.paths import path_str

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(path): leaf for path, leaf in leaves if hasattr(leaf, "shape")}


def _unreadable(manager, step: int, where: str, error: Exception) -> CheckpointError:
    older = [s for s in manager.all_steps() if s < step]
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    first_line = first_line.split(" [tensorstore_spec=")[0]  # the storage spec, as JSON
    if len(first_line) > 240:  # storage errors nest; their start and end say the most
        first_line = f"{first_line[:120]} ... {first_line[-120:]}"
    fallback = (
        f"Move {where} out of the checkpoints folder to resume from step {max(older)} "
        if older
        else f"Move {where} away to start afresh "
    )
    return CheckpointError(
        f"The newest checkpoint, {where}, cannot be read ({type(error).__name__}: "
        f"{first_line}). It is damaged. {fallback}(older checkpoints: "
        f"{', '.join(map(str, older)) or 'none'}). Nothing was deleted."
    )


_MAX_LISTED = 20


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Starts an async save of `state` at `step` if due (or `force`); returns whether it did."""
    if force and step in manager.all_steps():
        return False
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def check_config(workdir: str, config: ml_collections.ConfigDict, keys: tuple[str, ...]) -> None:
    """Refuses to resume under a model other than the one recorded in `workdir/config.json`.

    Checkpoints in a workdir belong to one model. If the fields in `keys` (model, tasks, ...)
    differ from those recorded there, restoring would fail deep inside Orbax or, worse, load
    weights into the wrong places, so this stops first and names the fields.
    """
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        return
    saved = _unused_trunks_dropped(workdir_files.read_json(path, fix=workdir_files.CONFIG_FIX))
    current = _unused_trunks_dropped(_as_dict(config))
    changed = [k for k in keys if saved.get(k) != current.get(k)]
    if changed:
        details = [
            f"{k}: {a!r} -> {b!r}"
            for key in changed
            for k, a, b in _differences(saved.get(key), current.get(key), key)
        ]
        raise ConfigError(
            f"{workdir} holds checkpoints of a run whose config differs in: "
            f"{', '.join(changed)} ({'; '.join(details[:10])}). Use a new --workdir, or the "
            "same config to resume. Nothing in the workdir was changed."
        )


def _unused_trunks_dropped(config: dict) -> dict:
    """`config` without the option blocks of the trunks it does not use.

    `model` holds one block of defaults per registered trunk; only `model.trunk`'s block shapes
    the checkpoint. Without this, registering a new trunk (a new default block) would refuse to
    resume every run recorded before it. The other fields of `model` (`trunk`, `head_hidden`)
    are plain values, so every dict but `model.trunk`'s is an unused trunk's block: no trunk
    registry is needed to tell them apart.
    """
    model = config.get("model")
    if not isinstance(model, dict) or "trunk" not in model:
        return config
    kept = {k: v for k, v in model.items() if not isinstance(v, dict) or k == model["trunk"]}
    # Likewise `model.architectures` holds every architecture's options, and a run with the
    # default (hard sharing) records nothing of them, so runs from before they existed resume.
    architecture = kept.pop("architecture", HARD_SHARING)
    blocks = model.get("architectures")
    if architecture != HARD_SHARING:
        kept["architecture"] = architecture
        kept["architectures"] = {architecture: (blocks or {}).get(architecture)}
    return {**config, "model": kept}


def record_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `workdir/config.json` (process 0) unless a run already recorded one."""
    path = epath.Path(workdir) / "config.json"
    if path.exists() or jax.process_index() != 0:
        return
    workdir_files.write_json(path, _as_dict(config), sort_keys=True)


def _absolute(directory: str) -> str:
    """Local paths made absolute (Orbax wants them so); URLs such as gs://... as they are."""
    return directory if "://" in str(directory) else os.path.abspath(directory)


def _as_dict(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def _differences(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """`(dotted field, old, new)` for each leaf that differs between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new))
            for d in _differences(old.get(k), new.get(k), f"{prefix}.{k}")
        ]
    return [] if old == new else [(prefix, old, new)]


# --- reading part of a checkpoint (partial restore) -----------------------------------------


def int_keys(tree: Any) -> Any:
    """Orbax metadata names list items "0", "1"...; NNX params dicts use ints."""
    if isinstance(tree, Mapping):
        return {
            (int(k) if isinstance(k, str) and k.isdigit() else k): int_keys(v)
            for k, v in tree.items()
        }
    return tree


def tree_shapes(path: str, select: tuple[str, ...] = ()) -> PyTree:
    """Shapes and dtypes (`jax.ShapeDtypeStruct`) of the subtree `select` of a saved pytree,
    read from the checkpoint's metadata (no array is loaded)."""
    metadata = ocp.PyTreeCheckpointer().metadata(os.path.abspath(path))
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
    for key in select:
        if not isinstance(tree, Mapping) or key not in tree:
            raise ConfigError(f"The checkpoint at {path} has no {'/'.join(select)}.")
        tree = tree[key]
    return jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), int_keys(tree)
    )


def read_subtree(path: str, select: tuple[str, ...], like: PyTree) -> PyTree:
    """The arrays of subtree `select` with the structure of `like` (a sub-tree of the saved one:
    leaves absent from `like` are not read), as host numpy arrays."""
    import numpy as np

    item = like
    for key in reversed(select):
        item = {key: item}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = ocp.PyTreeCheckpointer().restore(
        os.path.abspath(path),
        args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
    )
    for key in select:
        restored = restored[key]
    return restored


def write_tree(path: str, tree: PyTree) -> None:
    """Saves `tree` as an Orbax checkpoint at `path` (which must not exist) and waits."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(path), tree)
    checkpointer.wait_until_finished()


def final_state(workdir: str) -> PyTree:
    """The whole train state of the newest checkpoint of a finished run in `workdir` (host
    arrays, nested dicts), with the integer keys NNX gives list items (Orbax reads them back
    as "0", "1"...), so that its parameters fit the model's own tree."""
    return int_keys(read_on_host(os.path.join(workdir, "checkpoints")))
