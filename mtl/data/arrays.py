"""In-memory "array datasets" and how batches are drawn from them.

An array dataset is a dict of host arrays with a leading example axis:

    {"inputs": [N, ...], "labels": {field: [N, ...]}, "masks": {field: bool [N]}}

`inputs` may also be a dict of arrays with the same leading axis (text: token ids, attention
mask); everything here tree-maps over it.

A label field's mask says which examples carry that label; batches keep the same structure.

Batches are drawn by a stateless sampler: the examples of step `s` depend only on
`(seed, s)` (an epoch-wise permutation seeded by the epoch number), so a resumed run draws
exactly the batches an uninterrupted run would, with no iterator state to checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from mtl.errors import DataError

ArrayDataset = dict[str, Any]


def num_examples(data: ArrayDataset) -> int:
    """Length of the leading axis (inputs may be one array or a dict of arrays, e.g. tokens)."""
    return int(len(jax.tree_util.tree_leaves(data["inputs"])[0]))


def input_shape(data: ArrayDataset) -> Any:
    """The shape of one example's inputs: a tuple, or a dict of tuples for dict inputs."""
    inputs = data["inputs"]
    if isinstance(inputs, dict):
        return {k: tuple(v.shape[1:]) for k, v in inputs.items()}
    return tuple(inputs.shape[1:])


def take(data: ArrayDataset, index: np.ndarray) -> ArrayDataset:
    """The examples at `index` (any numpy index), same structure."""
    return jax.tree_util.tree_map(lambda a: a[index], data)


def materialize(data: ArrayDataset) -> ArrayDataset:
    """Host numpy arrays for every leaf: lazy columns (image files, `mtl.data.images`) are
    decoded here, and only here."""
    return jax.tree_util.tree_map(np.asarray, data)


def select_fields(data: ArrayDataset, fields: Sequence[str]) -> ArrayDataset:
    """Keeps only the label fields in `fields` and drops examples labelled for none of them.

    A single-task run on a data set labelled for many tasks then trains on that task's examples
    only, instead of on batches that are mostly masked out.
    """
    fields = list(fields)
    labels = {f: data["labels"][f] for f in fields}
    masks = {f: data["masks"][f] for f in fields}
    keep = np.any(np.stack([np.asarray(masks[f], bool) for f in fields]), axis=0)
    return take({"inputs": data["inputs"], "labels": labels, "masks": masks}, np.flatnonzero(keep))


def batch_indices(seed: int | Sequence[int], step: int, num: int, batch_size: int) -> np.ndarray:
    """Example indices of batch `step`: consecutive slices of per-epoch permutations."""
    seed = [seed] if isinstance(seed, int) else list(seed)
    start = step * batch_size
    positions = np.arange(start, start + batch_size)
    epochs, offsets = np.divmod(positions, num)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = np.random.default_rng([*seed, int(epoch)]).permutation(num)[offsets[sel]]
    return out


def task_owners(data: ArrayDataset, fields: Sequence[str]) -> np.ndarray:
    """[N] index into `fields` of the one field that labels each example.

    Raises `DataError` naming the problem when an example carries no label or several: a
    per-task batch layout needs every example to belong to exactly one task.
    """
    masks = np.stack([np.asarray(data["masks"][f], bool) for f in fields], axis=1)
    per_example = masks.sum(axis=1)
    for is_bad, what in (
        (per_example == 0, "no task's label"),
        (per_example >= 2, "the labels of several tasks"),
    ):
        bad = np.flatnonzero(is_bad)
        if bad.size:
            shared = [f for f, m in zip(fields, masks[bad[0]], strict=True) if m]
            raise DataError(
                f"batch_layout='per_task' needs every training example labelled for exactly "
                f"one task, but {bad.size} examples carry {what} (the first, example "
                f"{bad[0]}, has {shared or 'none'}). Use batch_layout='mixed' for this data, "
                f"or drop the task whose labels overlap the others'."
            )
    empty = [f for f, m in zip(fields, masks.T, strict=True) if not m.any()]
    if empty:
        raise DataError(
            f"batch_layout='per_task' draws a group of rows from every task, but the training "
            f"data has no examples for {', '.join(empty)}."
        )
    return masks.argmax(axis=1)


def per_task_batch_indices(
    seed: int, step: int, owners: np.ndarray, num_tasks: int, batch_size: int
) -> np.ndarray:
    """Batch `step` as `num_tasks` equal groups, group t drawn from task t's examples only,
    each task with its own epoch-wise permutations (so, like `batch_indices`, a batch
    depends only on `(seed, step)`)."""
    per_task = batch_size // num_tasks
    groups = []
    for t in range(num_tasks):
        mine = np.flatnonzero(owners == t)
        groups.append(mine[batch_indices((seed, t), step, len(mine), per_task)])
    return np.concatenate(groups)


def eval_batches(data: ArrayDataset, batch_size: int) -> Iterator[ArrayDataset]:
    """The whole data set in order, in batches of exactly `batch_size` (see `eval_batch`)."""
    for k in range(num_eval_batches(data, batch_size)):
        yield eval_batch(data, batch_size, k)


def num_eval_batches(data: ArrayDataset, batch_size: int) -> int:
    return -(-num_examples(data) // batch_size)


def eval_batch(data: ArrayDataset, batch_size: int, k: int) -> ArrayDataset:
    """Examples `k * batch_size ...` in order, as host arrays.

    The last batch is padded by repeating examples with all masks off, so padding never counts
    in a metric and every batch has the shape the compiled evaluation step expects.
    """
    index = np.arange(k * batch_size, (k + 1) * batch_size)
    valid = index < num_examples(data)
    batch = materialize(take(data, np.where(valid, index, 0)))
    batch["masks"] = {f: np.logical_and(m, valid) for f, m in batch["masks"].items()}
    return batch
