"""Folders of image files as labelled examples: `ROOT/<class>/<file>`, split or not.

    folder = scan_classes("/data/flowers")            # ROOT/<class>/<file>
    folder.classes, folder.paths[:2], folder.labels[:2]
    splits = split_folders("/data/flowers", ("train", "test"))   # ROOT/<split>/<class>/<file>

A class is a folder `class_depth` levels below the root (2 for `ROOT/<alphabet>/<character>/`
trees such as Omniglot's) named by its relative path; every image file below it is an example,
in sorted order, so the same tree gives the same examples on every machine. Files that are not
images (README, .DS_Store) are ignored; a class folder without images is an error.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from mtl.data.images import EXTENSIONS, is_image_file
from mtl.errors import DataError


@dataclasses.dataclass(frozen=True)
class Folder:
    """The examples of one tree: `paths[i]` is of class `classes[labels[i]]`."""

    paths: np.ndarray  # object [N] of str
    labels: np.ndarray  # int32 [N]
    classes: tuple[str, ...]

    def take(self, index: np.ndarray) -> Folder:
        return Folder(self.paths[index], self.labels[index], self.classes)


def _image_files(directory: str) -> list[str]:
    found = []
    for parent, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(parent, f) for f in sorted(files) if is_image_file(f)]
    return found


def _class_dirs(root: str, depth: int) -> list[str]:
    """Relative paths of the folders `depth` levels below `root`, sorted."""
    level = [""]
    for _ in range(depth):
        level = [
            os.path.join(rel, d)
            for rel in level
            for d in sorted(os.listdir(os.path.join(root, rel)))
            if not d.startswith(".") and os.path.isdir(os.path.join(root, rel, d))
        ]
    return level


def check_root(root: str, field: str) -> None:
    if not root:
        raise DataError(f"No image folder: set --config.{field} to a folder ROOT/<class>/<file>.")
    if not os.path.isdir(root):
        raise DataError(f"The image folder {root} does not exist (config {field}).")


def scan_classes(root: str, *, class_depth: int = 1, field: str = "data.root") -> Folder:
    """Every image below each class folder of `root` (see the module docstring)."""
    check_root(root, field)
    classes = _class_dirs(root, class_depth)
    if not classes:
        raise DataError(
            f"{root} holds no class folders {class_depth} level(s) down (config {field}): "
            f"put each class's images in ROOT/<class>/ (or set data.class_depth)."
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = _image_files(os.path.join(root, name))
        if not files:
            raise DataError(
                f"The class folder {os.path.join(root, name)} holds no images "
                f"({', '.join(EXTENSIONS)}). Add its images or remove the folder."
            )
        paths += files
        labels += [label] * len(files)
    return Folder(np.array(paths, dtype=object), np.array(labels, np.int32), tuple(classes))


def split_folders(root: str, names: Sequence[str]) -> dict[str, str] | None:
    """`{split: ROOT/<split>}` when `root` has a folder for every name in `names`, else None
    (the tree is `ROOT/<class>/<file>` and the caller splits it)."""
    found = {n: os.path.join(root, n) for n in names}
    return found if all(os.path.isdir(p) for p in found.values()) else None


def relabel(folder: Folder, classes: Sequence[str]) -> Folder:
    """`folder`'s labels as indices into `classes` (the union of several splits' classes)."""
    lookup = {c: i for i, c in enumerate(classes)}
    mapping = np.array([lookup[c] for c in folder.classes], np.int32)
    return Folder(folder.paths, mapping[folder.labels], tuple(classes))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """bool [N]: True for the `fraction` of each class's examples (at least one, and never all
    of a class with two or more) that a seeded permutation picks."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(labels), bool)
    if fraction <= 0:
        return chosen
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        count = int(round(fraction * len(rows)))
        count = min(max(count, 1), len(rows) - 1) if len(rows) > 1 else 0
        chosen[rng.permutation(rows)[:count]] = True
    return chosen


def scan_meta_splits(
    root: str, split_names: Sequence[str], *, class_depth: int, field: str = "data.root"
) -> tuple[Folder, dict[str, list[str]] | None]:
    """The classes of `root` for episodes, and the class names of each meta-split when the tree
    is `ROOT/<split>/<class>/<file>` with a folder per name in `split_names` (else None)."""
    check_root(root, field)
    dirs = split_folders(root, split_names)
    if dirs is None:
        return scan_classes(root, class_depth=class_depth, field=field), None
    parts = {s: scan_classes(d, class_depth=class_depth, field=field) for s, d in dirs.items()}
    classes = tuple(f"{s}/{c}" for s, part in parts.items() for c in part.classes)
    offsets = np.cumsum([0, *(len(p.classes) for p in parts.values())])
    folder = Folder(
        np.concatenate([p.paths for p in parts.values()]),
        np.concatenate([p.labels + o for p, o in zip(parts.values(), offsets, strict=False)]),
        classes,
    )
    listed = {s: [f"{s}/{c}" for c in p.classes] for s, p in parts.items()}
    return folder, listed


def count_classes(root: str, class_depth: int = 1, split_names=("train", "test")) -> int:
    """The number of classes a tree has (its train split's, for `ROOT/<split>/...`): what a
    config sets as the task's `num_outputs` without reading any image."""
    check_root(root, "the config argument")
    dirs = split_folders(root, split_names)
    return len(_class_dirs(dirs[split_names[0]] if dirs else root, class_depth))
