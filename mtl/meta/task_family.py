"""Episodes drawn one task at a time from several classification tasks.

    family = task_family({"mr": mr_data, "subj": subj_data, "trec": trec_data},
                         {"train": ["mr", "subj"], "val": [], "test": ["trec"]}, ...)
    family.sample("train", seed=0, index=12, batch=4, ways=5, shots=8, queries=8)

Where `class_family` pools the classes of one data set and splits them, here the unit that is
split is the task: meta-training draws episodes from the meta-train tasks and is scored on the
held-out ones (leave-one-task-out, as Leopard and SetFit's few-shot protocol do). A meta-batch
comes from one task, chosen by `(seed, index)` like the episodes themselves; its episodes are
N-way K-shot over that task's classes, and a task with fewer than N classes gives episodes of
all its classes (a binary task 2-way episodes), so `ways` is an upper bound. A class with
fewer than `shots + queries` examples is left out of its task's episodes (logged once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from mtl.errors import ConfigError
from mtl.meta.episodes import (
    ClassDataset,
    Episodes,
    check_episodes,
    classes_with_at_least,
    sample_episodes,
)
from mtl.meta.omniglot import SPLITS

_SPLIT_STREAMS = {name: i for i, name in enumerate(SPLITS)}


@dataclasses.dataclass(frozen=True, eq=False)
class TaskFamily:
    """Named tasks in each meta-split, and how raw inputs become model inputs."""

    splits: dict[str, tuple[tuple[str, ClassDataset], ...]]
    input_shape: Any
    preprocess_fn: Callable[[Any], Any]
    class_names: dict[str, dict[str, tuple[str, ...]]]  # split -> task -> class names
    # (split, task position, examples needed per class) -> that task without smaller classes
    _usable: dict = dataclasses.field(default_factory=dict, repr=False)

    def tasks(self, split: str) -> tuple[str, ...]:
        return tuple(name for name, _ in self.splits[split])

    def num_classes(self, split: str) -> int:
        """The most classes of any task of `split`."""
        return max(data.num_classes for _, data in self.splits[split])

    def fewest_classes(self, split: str) -> int:
        return min(data.num_classes for _, data in self.splits[split])

    def check(self, split: str, ways: int, shots: int, queries: int) -> None:
        """A `ConfigError` naming the task of `split` that cannot supply these episodes."""
        if not self.splits[split]:
            raise ConfigError(f"No meta-{split} task: list some in data.{split}_tasks.")
        for position, (name, full) in enumerate(self.splits[split]):
            data = self._episode_classes(split, position, shots + queries)
            if data.num_classes < min(2, full.num_classes):
                raise ConfigError(
                    f"{shots} shots + {queries} queries per class need {shots + queries} "
                    f"examples of a class, and task {name} has {data.num_classes} class(es) "
                    f"with that many (of {full.num_classes}); episodes need 2. Use fewer shots "
                    f"or queries, or leave {name} out of data.{split}_tasks."
                )
            check_episodes(data, min(int(ways), data.num_classes), shots, queries)

    def sample(
        self, split: str, seed: int, index: int, *, batch: int, ways: int, shots: int, queries: int
    ) -> Episodes:
        tasks = self.splits[split]
        stream = seed * len(SPLITS) + _SPLIT_STREAMS[split]
        chosen = int(np.random.default_rng([stream, index, len(tasks)]).integers(len(tasks)))
        data = self._episode_classes(split, chosen, shots + queries)
        return sample_episodes(
            data,
            stream * len(tasks) + chosen,
            index,
            batch=batch,
            ways=min(int(ways), data.num_classes),
            shots=shots,
            queries=queries,
        )

    def preprocess(self, raw: Any) -> Any:
        return self.preprocess_fn(raw)

    def _episode_classes(self, split: str, position: int, need: int) -> ClassDataset:
        key = (split, position, need)
        if key not in self._usable:
            name, full = self.splits[split][position]
            data = classes_with_at_least(full, need)
            if data.num_classes < full.num_classes:
                logging.warning(
                    "Task %s: %d of its %d classes have fewer than %d examples (shots + "
                    "queries) and are left out of its episodes.",
                    name, full.num_classes - data.num_classes, full.num_classes, need,
                )  # fmt: skip
            self._usable[key] = data
        return self._usable[key]


def check_meta_splits(
    names: Sequence[str], meta_splits: Mapping[str, Sequence[str]]
) -> dict[str, tuple[str, ...]]:
    """The task names of each meta-split; a `ConfigError` names an unknown task or one that
    is in two meta-splits (no task of meta-test may be seen in meta-training)."""
    out, seen = {}, {}
    for split in SPLITS:
        listed = tuple(meta_splits.get(split) or ())
        unknown = [t for t in listed if t not in names]
        if unknown:
            raise ConfigError(
                f"data.{split}_tasks names {unknown[0]!r}, which is not a loaded task. "
                f"Tasks: {', '.join(names)}."
            )
        twice = [t for t in listed if t in seen]
        if twice:
            raise ConfigError(
                f"Task {twice[0]!r} is in both data.{seen[twice[0]]}_tasks and "
                f"data.{split}_tasks; a task belongs to one meta-split."
            )
        seen |= {t: split for t in listed}
        out[split] = listed
    if not out["train"]:
        raise ConfigError("data.train_tasks is empty: name the tasks to meta-train on.")
    return out


def task_family(
    tasks: Mapping[str, tuple[Any, np.ndarray, Sequence[str]]],
    meta_splits: Mapping[str, Sequence[str]],
    *,
    input_shape: Any,
    preprocess: Callable[[Any], Any],
) -> TaskFamily:
    """The family of `tasks` = {name: (inputs, labels, class names)} split by task name.

    A meta-split without tasks (often meta-val) samples nothing; asking it raises."""
    chosen = check_meta_splits(list(tasks), meta_splits)
    splits, names = {}, {}
    for split, listed in chosen.items():
        splits[split] = tuple(
            (t, ClassDataset(tasks[t][0], np.asarray(tasks[t][1]), name=f"task {t}"))
            for t in listed
        )
        names[split] = {t: tuple(map(str, tasks[t][2])) for t in listed}
    return TaskFamily(splits, input_shape, preprocess, names)
