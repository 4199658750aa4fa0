"""Episode families by name: `config.data.name` picks one; the rest of `config.data` are its
options, checked against the loader's keyword arguments.

A family declares its kind ("classification" or "regression") where it is registered, so
`kind(data_config)` and `describe(data_config)` answer without loading any data. A loaded
family has `input_shape` and

    check(split, ways, shots, queries)          # ConfigError if the split cannot supply them
    sample(split, seed, index, *, batch, ways, shots, queries) -> episodes (see episodes.py)
    num_classes(split) -> int | None
    preprocess(raw_inputs) -> model inputs        # what the adapt/predict API applies
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mtl.registry import Registry

FAMILIES: Registry = Registry("episode family")
KINDS = ("classification", "regression")

# What the model sees, without loading the data: `inputs(**all options) -> (input_shape,
# preprocess)`, called with the family's defaults updated by the config's options.
Inputs = Callable[..., tuple[tuple[int, ...], Callable[[np.ndarray], np.ndarray]]]


def _family(name: str, kind: str, inputs: Inputs) -> Callable:
    """Registers a family factory under `name` with its `kind` and its `inputs` description
    (a function of the same options), which `kind` and `describe` read without building it."""
    if kind not in KINDS:
        raise ValueError(f"Family {name!r}: kind must be one of {KINDS}, got {kind!r}.")

    def add(factory: Callable) -> Callable:
        factory.kind = kind
        factory.inputs = inputs
        return FAMILIES.register(name)(factory)

    return add


def _sinusoid_inputs(**options):
    del options
    from mtl.meta.sinusoid import SinusoidFamily

    family = SinusoidFamily()
    return family.input_shape, family.preprocess


def _omniglot_inputs(*, image_size: int, **options):
    del options
    from mtl.data.omniglot import preprocess_omniglot

    size = int(image_size)
    return (size, size, 1), lambda images: preprocess_omniglot(images, size)


@_family("sinusoid", kind="regression", inputs=_sinusoid_inputs)
def sinusoid(
    amplitude: Sequence[float] = (0.1, 5.0),
    phase: Sequence[float] = (0.0, math.pi),
    x_range: Sequence[float] = (-5.0, 5.0),
):
    """MAML's sinusoid regression tasks (no data to download)."""
    from mtl.meta.sinusoid import SinusoidFamily

    return SinusoidFamily(tuple(amplitude), tuple(phase), tuple(x_range))


@_family("omniglot", kind="classification", inputs=_omniglot_inputs)
def omniglot(
    data_dir: str | None = None,
    tfds_dir: str | None = None,
    splits: Sequence[str] = ("small1", "small2"),
    image_size: int = 28,
    split_fractions: Sequence[float] = (0.65, 0.1, 0.25),
    split_seed: int = 0,
    rotations: Sequence[int] = (0, 1, 2, 3),
):
    """Omniglot characters (and their rotations) split into meta-train / val / test.

    Args:
      data_dir: folder with the original Omniglot zips; None reads $MTL_OMNIGLOT_DIR, and
        without it TFDS downloads them.
      tfds_dir: where TFDS keeps the prepared data (TFDS's default when None).
      splits: which zips to use (`small1`, `small2`, `train` = background, `test` = evaluation).
      image_size: side of the square images after resizing (MAML uses 28).
      split_fractions: fractions of the characters in meta-train, meta-val and meta-test.
      split_seed: seed of the character permutation that makes the splits.
      rotations: quarter turns that make new classes (MAML: all four).
    """
    from mtl.data import omniglot as data  # imports TensorFlow: only when this family is used
    from mtl.meta.omniglot import omniglot_family

    images = data.load_omniglot(
        data.resolve_data_dir(data_dir),
        splits=tuple(splits),
        tfds_dir=tfds_dir or None,
        image_size=image_size,
    )
    return omniglot_family(
        images, split_fractions=split_fractions, split_seed=split_seed, rotations=rotations
    )


def _image_folder_inputs(*, image_size: int, channels: int, invert: bool, **options):
    del options
    from mtl.data.images import ImageSpec, preprocess_arrays

    spec = ImageSpec(int(image_size), int(channels), bool(invert))
    return spec.shape, lambda images: preprocess_arrays(images, spec)


@_family("image_folder", kind="classification", inputs=_image_folder_inputs)
def image_folder(
    root: str = "",
    class_depth: int = 1,
    image_size: int = 28,
    channels: int = 1,
    invert: bool = False,
    split_fractions: Sequence[float] = (0.65, 0.1, 0.25),
    split_seed: int = 0,
    split_classes: Mapping[str, Sequence[str]] | None = None,
    rotations: Sequence[int] = (0,),
    check_images: bool = True,
    in_memory: bool = False,
):
    """Classes of the user's image folder `ROOT/<class>/<file>` as N-way K-shot episodes.

    Args:
      root: the tree; with `ROOT/train`, `ROOT/val` and `ROOT/test` folders, their classes
        are the meta-splits.
      class_depth: folder levels below the root (or split folder) that name a class.
      image_size, channels, invert: what every image becomes (`mtl.data.images.ImageSpec`).
      split_fractions: fractions of the classes in meta-train, meta-val and meta-test.
      split_seed: seed of the class permutation that makes the splits.
      split_classes: {"train": [...], "val": [...], "test": [...]} class names (relative
        folder paths) instead of the seeded permutation.
      rotations: quarter turns that make new classes (Omniglot's MAML setting: 0, 1, 2, 3).
      check_images: decode every file once before training (a damaged file fails at once).
      in_memory: decode every image once at load and keep the arrays (no decoding per
        episode; rotations are then applied to the arrays).
    """
    from mtl.data import image_folder as folders
    from mtl.data import images
    from mtl.meta.class_family import SPLITS, class_family

    spec = images.ImageSpec(image_size, channels, invert)
    folder, listed = folders.scan_meta_splits(root, SPLITS, class_depth=class_depth)
    inputs = images.LazyImages(folder.paths, spec)
    if in_memory:
        inputs = images.decode_all(inputs)
    elif check_images:
        images.check_files(folder.paths)
    return class_family(
        inputs,
        folder.labels,
        folder.classes,
        input_shape=spec.shape,
        preprocess=lambda raw: images.preprocess_arrays(raw, spec),
        split_fractions=split_fractions,
        split_seed=split_seed,
        split_classes_by_name=split_classes or listed,
        rotations=rotations,
        name=root,
    )


def _text_table_inputs(*, tokenizer_dir: str | None, max_length: int, **options):
    del options
    from mtl.data import text

    loaded = []  # the tokenizer, read on first use and kept
    warned = []  # the truncation warning is given once per learner

    def preprocess(sentences):
        if not loaded:
            loaded.append(text.load_tokenizer(text.check_tokenizer_dir(tokenizer_dir)))
        sentences = text.check_sentences(sentences)
        if not warned and text.truncated(loaded[0], sentences, int(max_length)):
            warned.append(True)
        return text.tokenize(loaded[0], sentences, int(max_length))

    width = (int(max_length),)
    return {"input_ids": width, "attention_mask": width, "token_type_ids": width}, preprocess


@_family("text_table", kind="classification", inputs=_text_table_inputs)
def text_table(
    table: str = "",
    text_column: str = "text",
    text_pair_column: str = "",
    label_columns: Sequence[str] = (),
    tokenizer_dir: str | None = None,
    max_length: int = 64,
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    split_seed: int = 0,
    split_classes: Mapping[str, Sequence[str]] | None = None,
):
    """Classes of the user's table of sentences as N-way K-shot episodes.

    A class is one value of one label column, named `<column>/<value>`; the classes of all
    label columns are pooled and split into meta-train / val / test.

    Args:
      table: a CSV / TSV / JSONL file (see `mtl.data.tables`).
      text_column, text_pair_column, label_columns: as in the `text_table` source.
      tokenizer_dir: a Hugging Face tokenizer; max_length: tokens per example.
      split_fractions, split_seed: the seeded split of the classes.
      split_classes: {"train": [...], "val": [...], "test": [...]} class names instead.
    """
    from mtl.data import text_tasks

    _, preprocess = _text_table_inputs(tokenizer_dir=tokenizer_dir, max_length=max_length)
    inputs, labels, names = text_tasks.class_examples(
        table,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_columns=label_columns,
        tokenizer_dir=tokenizer_dir,
        max_length=max_length,
    )
    from mtl.meta.class_family import class_family

    return class_family(
        inputs,
        labels,
        names,
        input_shape={k: (int(max_length),) for k in inputs},
        preprocess=preprocess,
        split_fractions=split_fractions,
        split_seed=split_seed,
        split_classes_by_name=split_classes,
        name=table,
    )


@_family("text_tasks", kind="classification", inputs=_text_table_inputs)
def text_tasks(
    senteval: Sequence[str] = (),
    senteval_dir: str | None = None,
    tfds_dir: str | None = None,
    senteval_split: str = "train",
    tables: Mapping[str, str] | None = None,
    text_column: str = "text",
    text_pair_column: str = "",
    label_column: str = "label",
    train_tasks: Sequence[str] = (),
    val_tasks: Sequence[str] = (),
    test_tasks: Sequence[str] = (),
    tokenizer_dir: str | None = None,
    max_length: int = 64,
):
    """Several text classification tasks, an episode from one task at a time, the tasks split
    into meta-train / val / test by name (`mtl.meta.task_family`).

    Args:
      senteval: SentEval tasks (mr, subj, mpqa, sst2, sst5, trec_coarse, trec_fine), read
        from `senteval_dir` (None: $MTL_SENTEVAL_DIR) through TFDS (`tfds_dir`); each
        gives the examples of its `senteval_split` (train, dev or test).
      tables: {task name: CSV / TSV / JSONL file} of the user's own tasks, each with the
        sentences in `text_column` (and `text_pair_column`) and the class in `label_column`.
      train_tasks, val_tasks, test_tasks: the task names of each meta-split (disjoint).
      tokenizer_dir: a Hugging Face tokenizer; max_length: tokens per example.
    """
    from mtl.data import text_tasks as text_data
    from mtl.meta.task_family import task_family

    loaded = text_data.named_tasks(
        senteval=senteval,
        senteval_dir=senteval_dir,
        tfds_dir=tfds_dir,
        senteval_split=senteval_split,
        tables=dict(tables or {}),
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        tokenizer_dir=tokenizer_dir,
        max_length=max_length,
    )
    _, preprocess = _text_table_inputs(tokenizer_dir=tokenizer_dir, max_length=max_length)
    return task_family(
        loaded,
        {"train": train_tasks, "val": val_tasks, "test": test_tasks},
        input_shape=_text_table_inputs(tokenizer_dir=tokenizer_dir, max_length=max_length)[0],
        preprocess=preprocess,
    )


@_family("tfds", kind="classification", inputs=_image_folder_inputs)
def tfds(
    dataset: str = "",
    data_dir: str = "",
    version: str = "",
    split: str = "train",
    image_key: str = "image",
    label_key: str = "label",
    image_size: int = 28,
    channels: int = 3,
    invert: bool = False,
    split_fractions: Sequence[float] = (0.65, 0.1, 0.25),
    split_seed: int = 0,
    split_classes: Mapping[str, Sequence[str]] | None = None,
    rotations: Sequence[int] = (0,),
    check_images: bool = True,
):
    """The classes of one split of a prepared TFDS image data set as N-way K-shot episodes
    (never downloads; see `mtl.data.tfds_tasks`).

    Args:
      dataset, data_dir, version: the prepared data set (`data_dir/dataset/version`).
      split: the TFDS split whose examples are used; `image_key`, `label_key`: its features.
      image_size, channels, invert: what every image becomes.
      split_fractions, split_seed, split_classes, rotations: the meta-splits, as in
        `image_folder` (class names are the ClassLabel's names, else the label values).
    """
    from mtl.data import images, tfds_tasks
    from mtl.meta.class_family import class_family

    spec = images.ImageSpec(image_size, channels, invert)
    keys = {"image": image_key, "text": "", "pair": "", "labels": (label_key,)}
    builder = tfds_tasks.open_builder(data_dir, dataset, version, (split,), keys)
    data = tfds_tasks.split_dataset(builder, split, keys, spec, None)
    labels, keep = data["labels"][label_key], data["masks"][label_key]
    names = tfds_tasks.class_names(builder, (label_key,)).get(label_key)
    names = names or tuple(str(c) for c in range(int(labels.max()) + 1))
    inputs = data["inputs"][np.flatnonzero(keep)]
    if check_images:
        images.check_images(inputs)
    return class_family(
        inputs,
        labels[keep],
        names,
        input_shape=spec.shape,
        preprocess=lambda raw: images.preprocess_arrays(raw, spec),
        split_fractions=split_fractions,
        split_seed=split_seed,
        split_classes_by_name=split_classes,
        rotations=rotations,
        name=f"{dataset}/{split}",
    )


def check_config(data_config: Mapping[str, Any]) -> tuple[str, dict]:
    """The family name and its options, or a `ConfigError` naming the bad field."""
    options = dict(data_config)
    name = options.pop("name")
    FAMILIES.get(name, field="data.name")
    return name, FAMILIES.options_from(name, options, field="data")


def load(data_config: Mapping[str, Any]):
    """Builds the family named by `data_config.name` with the rest of the block as options."""
    name, options = check_config(data_config)
    return FAMILIES.get(name)(**options)


def kind(data_config: Mapping[str, Any]) -> str:
    """The kind ("classification" or "regression") that the family named by `data_config.name`
    declares.

    Checks the block (a `ConfigError` names a bad field) but loads no data.
    """
    name, _ = check_config(data_config)
    return FAMILIES.get(name).kind


def describe(data_config: Mapping[str, Any]):
    """`(kind, input_shape, preprocess)` of a family without loading its data.

    `preprocess` maps inputs in the data set's own form (Omniglot: images as read from the
    PNG files) to what the model was trained on; the adapt/predict API applies it.
    """
    name, options = check_config(data_config)
    factory = FAMILIES.get(name)
    input_shape, preprocess = factory.inputs(**(FAMILIES.options(name) | options))
    return factory.kind, input_shape, preprocess
