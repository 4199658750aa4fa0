"""Episodes from any labelled examples: classes split into meta-train / val / test.

    family = class_family(inputs, labels, class_names, split_fractions=(0.6, 0.2, 0.2))
    family.sample("train", seed=0, index=12, batch=4, ways=5, shots=1, queries=15)

The user's image folders, text tables and TFDS data sets become episode families here: their
classes (not their examples) are split by a seeded permutation or by listed class names, so no
class of a meta-test episode was seen in meta-training. `sample` has the signature of every
episode family (see `mtl.meta.families`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mtl.errors import ConfigError
from mtl.meta.episodes import ClassDataset, Episodes, check_episodes, sample_episodes
from mtl.meta.omniglot import SPLITS, split_characters

_SPLIT_STREAMS = {name: i for i, name in enumerate(SPLITS)}


@dataclasses.dataclass(frozen=True, eq=False)
class ClassFamily:
    """Meta-splits of class-indexed examples and how raw inputs become model inputs."""

    splits: dict[str, ClassDataset]
    input_shape: Any
    preprocess_fn: Callable[[Any], Any]
    class_names: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def num_classes(self, split: str) -> int:
        return self.splits[split].num_classes

    def check(self, split: str, ways: int, shots: int, queries: int) -> None:
        check_episodes(self.splits[split], ways, shots, queries)

    def sample(
        self, split: str, seed: int, index: int, *, batch: int, ways: int, shots: int, queries: int
    ) -> Episodes:
        stream = seed * len(SPLITS) + _SPLIT_STREAMS[split]
        return sample_episodes(
            self.splits[split], stream, index, batch=batch, ways=ways, shots=shots, queries=queries
        )

    def preprocess(self, raw: Any) -> Any:
        return self.preprocess_fn(raw)


def split_classes(
    names: Sequence[str],
    *,
    fractions: Sequence[float],
    seed: int,
    listed: Mapping[str, Sequence[str]] | None = None,
    field: str = "data.split_classes",
) -> dict[str, np.ndarray]:
    """Class indices of each split: `listed` names when given, else a seeded permutation."""
    if not listed:
        return split_characters(len(names), fractions, seed)
    lookup = {n: i for i, n in enumerate(names)}
    if sorted(listed) != sorted(SPLITS):
        raise ConfigError(f"config {field} must list the classes of {', '.join(SPLITS)}.")
    out, seen = {}, {}
    for split in SPLITS:
        unknown = [n for n in listed[split] if n not in lookup]
        if unknown:
            some = ", ".join(list(names)[:10]) + (", ..." if len(names) > 10 else "")
            raise ConfigError(
                f"config {field}.{split} names {unknown[0]!r}, which is not a class of this "
                f"data set. Classes: {some}."
            )
        twice = [n for n in listed[split] if n in seen]
        if twice:
            raise ConfigError(
                f"config {field}: class {twice[0]!r} is in both {seen[twice[0]]} and {split}."
            )
        seen |= {n: split for n in listed[split]}
        out[split] = np.array(sorted(lookup[n] for n in listed[split]), np.int64)
    return out


def class_family(
    inputs: Any,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    input_shape: Any,
    preprocess: Callable[[Any], Any],
    split_fractions: Sequence[float],
    split_seed: int,
    split_classes_by_name: Mapping[str, Sequence[str]] | None = None,
    rotations: Sequence[int] = (0,),
    name: str = "data",
) -> ClassFamily:
    """The family of `inputs` with class `labels` (indices into `class_names`); each quarter
    turn in `rotations` other than 0 makes a new class of every image class."""
    ids = split_classes(
        class_names, fractions=split_fractions, seed=split_seed, listed=split_classes_by_name
    )
    rotations = tuple(int(k) for k in rotations)
    if not rotations or len(set(rotations)) != len(rotations) or not set(rotations) <= {0, 1, 2, 3}:
        raise ConfigError(
            f"data.rotations must be distinct quarter turns from 0, 1, 2, 3, got {rotations}."
        )
    is_image = hasattr(inputs, "quarter_turns") or getattr(inputs, "ndim", 0) == 4
    if rotations != (0,) and not is_image:
        raise ConfigError("data.rotations apply to images only; leave it (0,) for this data.")
    splits, names = {}, {}
    for split, chosen in ids.items():
        rows = np.flatnonzero(np.isin(labels, chosen))
        part = jax.tree_util.tree_map(lambda a, r=rows: a[r], inputs)
        base = labels[rows].astype(np.int64)
        if rotations != (0,):
            part, base = _rotated(part, base, rotations)
        splits[split] = ClassDataset(part, base, name=f"{name} meta-{split}")
        names[split] = tuple(_class_name(class_names, c, rotations) for c in splits[split].classes)
    return ClassFamily(splits, input_shape, preprocess, names)


def _class_name(names: Sequence[str], label: int, rotations: tuple[int, ...]) -> str:
    if rotations == (0,):
        return str(names[label])
    return f"{names[label // 4]} (turned {90 * (label % 4)})"


def _rotated(images, labels: np.ndarray, rotations: tuple[int, ...]):
    """Every image in each rotation; class = class * 4 + quarter turns (as Omniglot's)."""
    from mtl.data import images as image_files

    labels = np.concatenate([labels * 4 + k for k in rotations])
    if isinstance(images, np.ndarray):  # decoded [N, H, W, C]
        return np.concatenate([np.rot90(images, k, axes=(1, 2)) for k in rotations]), labels
    copies = [
        image_files.LazyImages(images.paths, images.spec, np.full(len(images), k), images.reader)
        for k in rotations
    ]
    return image_files.concatenate(copies), labels
