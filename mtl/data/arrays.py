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


def batch_indices(seed: int, step: int, num: int, batch_size: int) -> np.ndarray:
    """Example indices of batch `step`: consecutive slices of per-epoch permutations."""
    start = step * batch_size
    positions = np.arange(start, start + batch_size)
    epochs, offsets = np.divmod(positions, num)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = np.random.default_rng([seed, int(epoch)]).permutation(num)[offsets[sel]]
    return out


def eval_batches(data: ArrayDataset, batch_size: int) -> Iterator[ArrayDataset]:
    """The whole data set in order, in batches of exactly `batch_size`.

    The last batch is padded by repeating examples with all masks off, so padding never counts
    in a metric and every batch has the shape the compiled evaluation step expects.
    """
    n = num_examples(data)
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size)
        valid = index < n
        batch = take(data, np.where(valid, index, 0))
        batch["masks"] = {f: np.logical_and(m, valid) for f, m in batch["masks"].items()}
        yield batch
