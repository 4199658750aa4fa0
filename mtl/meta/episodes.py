"""N-way K-shot episodes over any class-indexed data set, a meta-batch at a time.

An episode (a task) draws `ways` classes and, from each, `shots` support and `queries` query
examples, without replacement; its labels are 0..ways-1 in a random order, so a learner cannot
memorise which class comes first. A meta-batch is `batch` episodes stacked:

    {"support": {"x": [batch, ways*shots, ...], "y": int32 [batch, ways*shots]},
     "query":   {"x": [batch, ways*queries, ...], "y": int32 [batch, ways*queries]}}

Inputs may be arrays, dicts of arrays (text) or `mtl.data.images.LazyImages`; episodes index
them the same way (lazy images stay lazy until `np.asarray`).

Sampling is stateless: meta-batch `index` depends only on `(seed, index)`, so a resumed run
draws exactly the episodes an uninterrupted run would, and evaluation episodes are the same
for every model that is evaluated with the same seed.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax
import numpy as np

from mtl.errors import ConfigError, DataError

Episodes = dict[str, dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous, so identity
class ClassDataset:
    """Examples with a class label each; `index[c, :counts[c]]` are the rows of class c."""

    inputs: Any  # [N, ...]: an array, a dict of arrays (text) or lazy image files
    labels: np.ndarray  # int [N], any class ids
    name: str = "data"
    index: np.ndarray = dataclasses.field(init=False)  # int64 [C, max count], -1 padded
    counts: np.ndarray = dataclasses.field(init=False)  # int64 [C]
    classes: np.ndarray = dataclasses.field(init=False)  # the class id of each row of `index`

    def __post_init__(self):
        labels = np.asarray(self.labels)
        rows = len(jax.tree_util.tree_leaves(self.inputs)[0])
        if len(labels) != rows:
            raise DataError(
                f"{self.name}: {rows} inputs but {len(labels)} labels; they must match one to one."
            )
        if len(labels) == 0:
            raise DataError(f"{self.name} holds no examples.")
        classes, dense, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(dense, kind="stable")
        index = np.full((len(classes), counts.max()), -1, np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(labels)) - np.repeat(starts, counts)
        index[dense[order], rank] = order
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "counts", counts.astype(np.int64))
        object.__setattr__(self, "classes", classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def classes_with_at_least(data: ClassDataset, count: int) -> ClassDataset:
    """`data` without the classes that have fewer than `count` examples (the same inputs).

    A task family draws episodes from tasks it did not make (TREC's fine labels hold classes
    of 4 questions), so a class too small for `shots + queries` is left out of that task's
    episodes instead of refusing the task."""
    keep = data.counts >= count
    if keep.all():
        return data
    kept = copy.copy(data)
    for field in ("index", "counts", "classes"):
        object.__setattr__(kept, field, getattr(data, field)[keep])
    return kept


def check_episodes(data: ClassDataset, ways: int, shots: int, queries: int) -> None:
    """Raises a `ConfigError` naming the limit when `data` cannot supply these episodes."""
    for field, value, low in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 0)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}.")
    if ways > data.num_classes:
        raise ConfigError(
            f"{ways}-way episodes need {ways} classes but {data.name} has {data.num_classes}. "
            f"Use at most {data.num_classes} ways, or give this split more classes."
        )
    fewest = int(data.counts.min())
    if shots + queries > fewest:
        raise ConfigError(
            f"{shots} shots + {queries} queries per class need {shots + queries} examples of "
            f"each class, but some classes of {data.name} have only {fewest}. Use "
            f"shots + queries <= {fewest}."
        )


def sample_episodes(
    data: ClassDataset,
    seed: int,
    index: int,
    *,
    batch: int,
    ways: int,
    shots: int,
    queries: int,
) -> Episodes:
    """Meta-batch `index` of the stream seeded by `seed` (see the module docstring)."""
    rng = np.random.default_rng([seed, index])
    # A random permutation per episode; its first `ways` classes are the episode's, and their
    # order is the label order.
    chosen = np.argsort(rng.random((batch, data.num_classes)), axis=1)[:, :ways]  # [B, N]
    keys = rng.random((batch, ways, data.index.shape[1]))
    keys[np.arange(data.index.shape[1]) >= data.counts[chosen][..., None]] = np.inf
    picks = np.argsort(keys, axis=-1)[..., : shots + queries]  # distinct rows within a class
    rows = data.index[chosen[..., None], picks]  # [B, N, K+Q]
    labels = np.broadcast_to(np.arange(ways, dtype=np.int32)[None, :, None], rows.shape)

    def part(cols: slice) -> dict[str, Any]:
        r = rows[..., cols].reshape(batch, -1)
        return {
            # Indexing only: lazy image files are decoded by whoever reads the rows it needs.
            "x": jax.tree_util.tree_map(lambda a: a[r], data.inputs),
            "y": np.ascontiguousarray(labels[..., cols].reshape(batch, -1)),
        }

    return {"support": part(slice(0, shots)), "query": part(slice(shots, shots + queries))}
