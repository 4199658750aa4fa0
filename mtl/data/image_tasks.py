"""Multi-task data sets from the user's image files (the `image_folder` source).

Three ways to say which image has which labels:

- one tree, one task: `root=ROOT` with `ROOT/<class>/<file>`; the task's label field is `task`;
- one tree per task: `roots={"flowers": ROOT_A, "birds": ROOT_B}`; an image of one tree is
  labelled for that tree's task only (the others' masks are off);
- a labels file: `root=ROOT, labels_file=FILE` (CSV / TSV / JSONL) with a column of paths
  relative to ROOT and one column per task; an empty cell is a missing label, masked.

Test examples come from `ROOT/<test>/...` when the tree has a folder for each of `split_names`
(default `train` and `test`; for a labels file, its `split_column`), else from a seeded,
per-class `test_fraction`.
Images stay files: the inputs are `LazyImages`, decoded when a batch is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from mtl.data import arrays, image_folder, images, tables
from mtl.data.arrays import ArrayDataset
from mtl.errors import ConfigError, DataError

Splits = dict[str, image_folder.Folder]  # "train" / "test" -> the examples of one task


def tree_splits(
    root: str,
    *,
    class_depth: int,
    split_names: Sequence[str],
    test_fraction: float,
    seed: int,
    field: str,
) -> Splits:
    """Train and test examples of one tree, classes numbered over both splits."""
    image_folder.check_root(root, field)
    split_dirs = image_folder.split_folders(root, split_names)
    if split_dirs is not None:
        train, test = (
            image_folder.scan_classes(split_dirs[n], class_depth=class_depth, field=field)
            for n in split_names
        )
        union = tables.found_classes(train.classes, test.classes)
        return {
            "train": image_folder.relabel(train, union),
            "test": image_folder.relabel(test, union),
        }
    whole = image_folder.scan_classes(root, class_depth=class_depth, field=field)
    is_test = image_folder.stratified_split(whole.labels, test_fraction, seed)
    return {"train": whole.take(~is_test), "test": whole.take(is_test)}


def declared(splits: Splits, names: Sequence[str] | None, task: str, root: str) -> Splits:
    """The splits labelled by the config's class list for `task` (when one is given)."""
    if not names:
        return splits
    found = set(splits["train"].classes) | set(splits["test"].classes)
    unknown = sorted(found - set(map(str, names)))
    if unknown:
        raise DataError(
            f"{root}: class folder(s) {', '.join(unknown[:5])} are not among the declared "
            f"classes of task {task!r} (config data.classes.{task}). Add them to the list or "
            f"move the folders out of the tree."
        )
    return {k: image_folder.relabel(f, tuple(map(str, names))) for k, f in splits.items()}


def from_trees(trees: Mapping[str, Splits], spec: images.ImageSpec) -> dict[str, ArrayDataset]:
    """One data set per split: the trees' examples one after another, each labelled (mask on)
    for its own tree's task only."""
    out = {}
    for split in ("train", "test"):
        folders = {task: s[split] for task, s in trees.items()}
        sizes = [len(f.paths) for f in folders.values()]
        starts = np.cumsum([0, *sizes])
        labels, masks = {}, {}
        for i, (task, folder) in enumerate(folders.items()):
            labels[task] = np.full(starts[-1], -1, np.int32)
            labels[task][starts[i] : starts[i + 1]] = folder.labels
            masks[task] = labels[task] >= 0
        paths = np.concatenate([f.paths for f in folders.values()]).astype(object)
        out[split] = {"inputs": images.LazyImages(paths, spec), "labels": labels, "masks": masks}
    return out


def from_labels_file(
    root: str,
    labels_file: str,
    *,
    path_column: str,
    label_columns: Sequence[str],
    split_column: str,
    split_names: Sequence[str],
    test_fraction: float,
    seed: int,
    classes: Mapping[str, Sequence[str]],
    spec: images.ImageSpec,
) -> tuple[dict[str, ArrayDataset], dict[str, tuple[str, ...]]]:
    """Train and test data sets from a table of `path, <task>, <task>, ...` rows."""
    image_folder.check_root(root, "data.root")
    table = tables.read_table(labels_file, field="data.labels_file")
    rel = tables.column(table, path_column, labels_file, "data.path_column")
    paths = np.array([_resolve(root, p, labels_file, i) for i, p in enumerate(rel)], object)
    skip = {path_column, split_column}
    tasks = list(label_columns) or [c for c in table if c not in skip]
    if not tasks:
        raise ConfigError(f"{labels_file} has no label column besides {path_column!r}.")
    columns = {}
    for task in tasks:
        values = tables.column(table, task, labels_file, "data.label_columns")
        names = classes.get(task) or tables.found_classes(values)
        columns[task] = tables.encode_labels(
            values, names, path=labels_file, name=task, field=f"data.classes.{task}"
        )
    is_test = _test_rows(table, labels_file, split_column, split_names, test_fraction, seed)
    data = {
        "inputs": images.LazyImages(paths, spec),
        "labels": {t: c.labels for t, c in columns.items()},
        "masks": {t: c.mask for t, c in columns.items()},
    }
    splits = {
        "train": arrays.take(data, np.flatnonzero(~is_test)),
        "test": arrays.take(data, np.flatnonzero(is_test)),
    }
    return splits, {t: c.classes for t, c in columns.items()}


def _resolve(root: str, path: str | None, table: str, row: int) -> str:
    if path is None:
        raise DataError(f"{table}, row {row + 2}: the path cell is empty; name an image file.")
    full = os.path.join(root, path)
    if not os.path.isfile(full):
        raise DataError(
            f"{table}, row {row + 2}: {full} does not exist. Paths in the labels file are "
            f"relative to data.root ({root})."
        )
    return full


def _test_rows(table, path, split_column, split_names, fraction, seed) -> np.ndarray:
    if not split_column:
        rows = len(next(iter(table.values())))
        return np.random.default_rng(seed).random(rows) < fraction
    values = tables.column(table, split_column, path, "data.split_column")
    bad = [(i, v) for i, v in enumerate(values) if v not in split_names]
    if bad:
        i, v = bad[0]
        raise DataError(
            f"{path}, row {i + 2}, column {split_column!r}: {v!r} is not a split name "
            f"({' or '.join(split_names)})."
        )
    return np.array([v == split_names[1] for v in values])


def check_split_options(split_names: Sequence[str], test_fraction: float) -> None:
    if len(tuple(split_names)) != 2:
        raise ConfigError(
            f"data.split_names must be (train, test) folder names, got {split_names}."
        )
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must lie in [0, 1), got {test_fraction}.")


def load(
    *,
    root: str,
    roots: Mapping[str, str] | None,
    labels_file: str,
    task: str,
    spec: images.ImageSpec,
    class_depth: int,
    split_names: Sequence[str],
    test_fraction: float,
    split_seed: int,
    classes: Mapping[str, Sequence[str]] | None,
    path_column: str,
    label_columns: Sequence[str],
    split_column: str,
    check_images: bool,
) -> tuple[dict[str, ArrayDataset], dict[str, tuple[str, ...]]]:
    """`({"train": ..., "test": ...}, class names per task)`; see the module docstring."""
    classes = dict(classes or {})
    check_split_options(split_names, test_fraction)
    if labels_file:
        if roots:
            raise ConfigError("Set data.labels_file (with data.root) or data.roots, not both.")
        splits, names = from_labels_file(
            root,
            labels_file,
            path_column=path_column,
            label_columns=label_columns,
            split_column=split_column,
            split_names=tuple(split_names),
            test_fraction=test_fraction,
            seed=split_seed,
            classes=classes,
            spec=spec,
        )
    else:
        if root and roots:
            raise ConfigError(
                "Set data.root (one task) or data.roots (one tree per task), not both."
            )
        trees = dict(roots or {}) or {task: root}
        per_task = {
            name: declared(
                tree_splits(
                    tree,
                    class_depth=class_depth,
                    split_names=tuple(split_names),
                    test_fraction=test_fraction,
                    seed=split_seed,
                    field=f"data.roots.{name}" if roots else "data.root",
                ),
                classes.get(name),
                name,
                tree,
            )
            for name, tree in trees.items()
        }
        splits = from_trees(per_task, spec)
        names = {t: s["train"].classes for t, s in per_task.items()}
    if check_images:
        images.check_files([p for s in splits.values() for p in s["inputs"].paths])
    return splits, names
