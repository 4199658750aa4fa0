"""Training batches from in-memory array data sets: batch `s` depends only on `(seed, s)`.

    source = ArrayBatches(data, mixed_sampler(seed=0, data=data, batch_size=64), 64)
    local = source(step=12, rows=slice(0, 32))     # this process's rows of batch 12

`prepare`, when given, maps the whole global host batch before the rows are cut (text: padding
trimmed to the batch's longest sentence), so every process cuts the same batch the same way.
Without it a process reads only its own rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from mtl.data import arrays, text

Prepare = Callable[[arrays.ArrayDataset], arrays.ArrayDataset]
Sampler = Callable[[int], np.ndarray]  # step -> example indices of the global batch


def mixed_sampler(seed: int, data: arrays.ArrayDataset, batch_size: int) -> Sampler:
    """Rows drawn from all examples (`batch_layout="mixed"`)."""
    num = arrays.num_examples(data)
    return lambda step: arrays.batch_indices(seed, step, num, batch_size)


def per_task_sampler(
    seed: int, data: arrays.ArrayDataset, batch_size: int, fields: Sequence[str]
) -> Sampler:
    """One equal group of rows per task, group t holding task t's examples only
    (`batch_layout="per_task"`)."""
    owners = arrays.task_owners(data, list(fields))
    return lambda step: arrays.per_task_batch_indices(seed, step, owners, len(fields), batch_size)


def trim_text(multiple: int) -> Prepare:
    """Host-batch function that cuts token arrays to the batch's longest sentence, rounded up
    to `multiple` tokens (`multiple <= 0` or non-text inputs: the batch as it is)."""

    def prepare(batch: arrays.ArrayDataset) -> arrays.ArrayDataset:
        if multiple <= 0 or not isinstance(batch["inputs"], dict):
            return batch
        return batch | {"inputs": text.trim_padding(batch["inputs"], multiple)}

    return prepare


def sorted_by_length(data: arrays.ArrayDataset) -> arrays.ArrayDataset:
    """Text examples sorted by length (others as they are), so trimmed batches are short."""
    inputs = data["inputs"]
    if not isinstance(inputs, dict) or "attention_mask" not in inputs:
        return data
    return arrays.take(data, np.argsort(np.sum(inputs["attention_mask"], 1), kind="stable"))


@dataclasses.dataclass(frozen=True)
class ArrayBatches:
    """A `BatchSource` over an array data set: `sampler(step)` picks the global batch."""

    data: arrays.ArrayDataset
    sampler: Sampler
    batch_size: int
    prepare: Prepare | None = None

    def __call__(self, step: int, rows: slice) -> Any:
        index = self.sampler(step)
        if self.prepare is None:
            return arrays.materialize(arrays.take(self.data, index[rows]))
        whole = self.prepare(arrays.materialize(arrays.take(self.data, index)))
        return jax.tree_util.tree_map(lambda a: a[rows], whole)
