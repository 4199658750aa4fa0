"""Omniglot episodes as in MAML (Finn et al. 2017; Santoro et al. 2016).

Images are 28x28 (strokes 1, background 0). Each character is a class, and each of its
rotations by 0, 90, 180 and 270 degrees is a class of its own, so one character gives four
classes. Characters, not images, are split into meta-train / meta-val / meta-test by a seeded
permutation: no character (in any rotation) is in two splits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mtl.data.omniglot import OmniglotImages, preprocess_omniglot
from mtl.errors import ConfigError
from mtl.meta.episodes import ClassDataset, Episodes, check_episodes, sample_episodes

SPLITS = ("train", "val", "test")
_SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


def split_characters(
    num_characters: int, fractions: Sequence[float], seed: int
) -> dict[str, np.ndarray]:
    """Character ids of each split: a seeded permutation cut by `fractions` (train, val, test)."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise ConfigError(
            f"data.split_fractions must be three positive fractions (train, val, test) "
            f"summing to 1, got {fractions}."
        )
    order = np.random.default_rng(seed).permutation(num_characters)
    cuts = np.round(np.cumsum(fractions)[:2] * num_characters).astype(int)
    parts = np.split(order, cuts)
    for name, part in zip(SPLITS, parts, strict=True):
        if len(part) == 0:
            raise ConfigError(
                f"data.split_fractions {fractions} leave the {name} split without any of the "
                f"{num_characters} characters; give it a larger fraction."
            )
    return {name: np.sort(part) for name, part in zip(SPLITS, parts, strict=True)}


def rotated_classes(
    images: np.ndarray, characters: np.ndarray, rotations: Sequence[int], name: str
) -> ClassDataset:
    """Every image in each rotation (quarter turns); class = character * 4 + quarter turns."""
    inputs = np.concatenate([np.rot90(images, k, axes=(1, 2)) for k in rotations])
    labels = np.concatenate([characters.astype(np.int64) * 4 + k for k in rotations])
    return ClassDataset(np.ascontiguousarray(inputs), labels, name=name)


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotFamily:
    """Omniglot's meta-splits; `sample` has the signature of every episode family."""

    splits: dict[str, ClassDataset]
    image_size: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 1)

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

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Images as read from Omniglot's PNGs (e.g. 105x105 bool or uint8) -> model inputs."""
        return preprocess_omniglot(images, self.image_size)


def omniglot_family(
    images: OmniglotImages,
    *,
    split_fractions: Sequence[float] = (0.65, 0.1, 0.25),
    split_seed: int = 0,
    rotations: Sequence[int] = (0, 1, 2, 3),
) -> OmniglotFamily:
    """Splits `images` by character and adds rotated classes (see the module docstring)."""
    rotations = tuple(int(k) for k in rotations)
    if not rotations or len(set(rotations)) != len(rotations) or not set(rotations) <= {0, 1, 2, 3}:
        raise ConfigError(
            f"data.rotations must be distinct quarter turns from 0, 1, 2, 3, got {rotations}."
        )
    character = images.class_ids()
    ids = split_characters(int(character.max()) + 1, split_fractions, split_seed)
    splits = {}
    for name, chars in ids.items():
        keep = np.isin(character, chars)
        splits[name] = rotated_classes(
            images.images[keep], character[keep], rotations, name=f"Omniglot meta-{name}"
        )
    return OmniglotFamily(splits, int(images.images.shape[1]))
