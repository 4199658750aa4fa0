"""Any TFDS data set already prepared in a data directory (the `tfds` source); never downloads.

    data = load(name="my_dataset", data_dir="/data/tfds", splits=("train", "test"),
                image_key="image", label_keys=("label",), spec=ImageSpec(64, 3))

The data set is opened from its prepared files (`tfds.builder_from_directory`), so neither its
builder code nor a network is needed. Images are kept encoded and decoded per batch: prepared
as `array_record` (TFDS's `--file_format=array_record`) they are read by record index from disk
(streamed: memory does not grow with the data set); prepared as `tfrecord` the encoded bytes
are read once into memory. Text features are tokenised with the run's tokenizer; every label
key is a task (label field); a ClassLabel's names are reported in results.json, and a negative
label is a missing one (masked).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from mtl.data import arrays, images, text
from mtl.errors import ConfigError, DataError


def builder_dir(data_dir: str, name: str, version: str) -> str:
    """`data_dir/name/version` (the newest prepared version when `version` is empty), or a
    `DataError` listing what is prepared there."""
    if not data_dir or not os.path.isdir(data_dir):
        raise DataError(
            f"The TFDS data directory {data_dir!r} does not exist (config data.data_dir). "
            f"Prepare the data set there first (`tfds build NAME --data_dir=DIR`): this source "
            f"never downloads."
        )
    prepared = sorted(d for d in os.listdir(data_dir) if _versions(os.path.join(data_dir, d)))
    if name not in prepared:
        raise DataError(
            f"No prepared TFDS data set {name!r} in {data_dir} (config data.dataset). "
            f"Prepared there: {', '.join(prepared) or 'none'}. Prepare it with `tfds build "
            f"{name} --data_dir={data_dir}`; this source never downloads."
        )
    versions = _versions(os.path.join(data_dir, name))
    chosen = version or max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    if chosen not in versions:
        raise DataError(
            f"{name} has no prepared version {version!r} in {data_dir} (config data.version); "
            f"prepared: {', '.join(versions)}."
        )
    return os.path.join(data_dir, name, chosen)


def _versions(path: str) -> list[str]:
    if not os.path.isdir(path):
        return []
    return sorted(
        v
        for v in os.listdir(path)
        if v.replace(".", "").isdigit()
        and os.path.isfile(os.path.join(path, v, "dataset_info.json"))
    )


class RecordImages:
    """Reads the encoded image feature `key` of record i of a TFDS data source (streaming)."""

    def __init__(self, source: Any, key: str, where: str):
        self.source, self.key, self.where = source, key, where

    def __call__(self, index: Any) -> Image.Image:
        return Image.open(io.BytesIO(self.source[int(index)][self.key]))

    def __repr__(self) -> str:
        return self.where


def encoded_bytes(item: Any) -> Image.Image:
    """The reader of images kept as encoded bytes in memory."""
    return Image.open(io.BytesIO(item))


def _check_keys(features: Any, keys: Sequence[str], where: str) -> None:
    for key in keys:
        if key and key not in features:
            raise ConfigError(
                f"{where} has no feature {key!r}; its features: {', '.join(features)}. Name "
                f"them in config data.image_key / text_key / label_keys."
            )


def read_split(builder: Any, split: str, keys: dict[str, Any]) -> tuple[dict, int, Any]:
    """`(columns, rows, source)`: every non-image feature of `split` as a list, read once with
    the image left encoded; `source` reads records by index (array_record) or is None."""
    from tensorflow_datasets import decode

    skip = {keys["image"]: decode.SkipDecoding()} if keys["image"] else None
    wanted = [k for k in (keys["text"], keys["pair"], *keys["labels"]) if k]
    fmt = str(builder.info.file_format).lower()
    if "array_record" in fmt:
        source = builder.as_data_source(split, decoders=skip)
        columns = {k: [] for k in wanted}
        for i in range(len(source)):  # images stay encoded and are not kept
            record = source[i]
            for k in wanted:
                columns[k].append(record[k])
        return columns, len(source), source
    import tensorflow_datasets as tfds  # tfrecord: read through tf.data once

    from mtl.data.tensorflow_needed import require_tensorflow

    what = f"Reading {builder.name} (prepared as tfrecord; array_record needs no TensorFlow)"
    require_tensorflow(what, str(builder.data_dir))

    dataset = tfds.as_numpy(builder.as_dataset(split, decoders=skip, shuffle_files=False))
    columns = {k: [] for k in [*wanted, keys["image"]] if k}
    for record in dataset:
        for k in columns:
            columns[k].append(record[k])
    return columns, len(next(iter(columns.values()))), None


def open_builder(data_dir: str, name: str, version: str, splits: Sequence[str], keys: dict):
    """The prepared builder, its features and splits checked against the config."""
    if bool(keys["image"]) == bool(keys["text"]):
        raise ConfigError("Set exactly one of data.image_key and data.text_key (the inputs).")
    if not keys["labels"]:
        raise ConfigError("data.label_keys must name at least one label feature (a task each).")
    import tensorflow_datasets as tfds  # TensorFlow: only when this source is used

    path = builder_dir(data_dir, name, version)
    builder = tfds.builder_from_directory(path)
    _check_keys(
        builder.info.features, [keys["image"], keys["text"], keys["pair"], *keys["labels"]], path
    )
    for split in splits:
        if split not in builder.info.splits:
            raise DataError(
                f"{path} has no split {split!r} (config data.splits); prepared splits: "
                f"{', '.join(builder.info.splits)}."
            )
    return builder


def split_dataset(builder, split: str, keys: dict, spec: images.ImageSpec, tokenize) -> dict:
    """One split as an array dataset: lazy images or tokens, one masked label per label key."""
    columns, rows, source = read_split(builder, split, keys)
    if keys["image"]:
        if source is not None:  # array_record: read each image from disk when needed
            where = f"{split} of {builder.data_dir}"
            items, reader = np.arange(rows), RecordImages(source, keys["image"], where)
        else:
            items, reader = np.empty(rows, object), encoded_bytes
            items[:] = columns[keys["image"]]
        inputs = images.LazyImages(np.asarray(items, object), spec, reader=reader)
    else:
        pairs = _strings(columns[keys["pair"]]) if keys["pair"] else None
        inputs = tokenize(_strings(columns[keys["text"]]), pairs)
    labels = {k: np.asarray(columns[k], np.int64).astype(np.int32) for k in keys["labels"]}
    return {"inputs": inputs, "labels": labels, "masks": {k: v >= 0 for k, v in labels.items()}}


def _strings(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def class_names(builder, label_keys: Sequence[str]) -> dict[str, tuple[str, ...]]:
    features = builder.info.features
    return {k: tuple(features[k].names) for k in label_keys if hasattr(features[k], "names")}


def tokenizer_fn(tokenizer_dir: str | None, max_length: int, needed: bool):
    """`(sentences, pairs) -> tokens` with the run's tokenizer (loaded only when `needed`)."""
    if not needed:
        return None
    tokenizer = text.load_tokenizer(text.check_tokenizer_dir(tokenizer_dir))
    return lambda sentences, pairs: text.tokenize(tokenizer, sentences, max_length, pairs)


def load(
    *,
    name: str,
    data_dir: str,
    version: str,
    splits: Sequence[str],
    image_key: str,
    text_key: str,
    text_pair_key: str,
    label_keys: Sequence[str],
    spec: images.ImageSpec,
    tokenizer_dir: str | None,
    max_length: int,
) -> tuple[dict[str, arrays.ArrayDataset], dict[str, tuple[str, ...]]]:
    """`({"train": ..., "test": ...}, class names per label key)` (see the module docstring)."""
    if len(tuple(splits)) != 2:
        raise ConfigError(f"data.splits must name the (train, test) splits, got {splits}.")
    keys = {"image": image_key, "text": text_key, "pair": text_pair_key, "labels": label_keys}
    builder = open_builder(data_dir, name, version, splits, keys)
    tokenize = tokenizer_fn(tokenizer_dir, max_length, bool(text_key))
    out = {
        role: split_dataset(builder, split, keys, spec, tokenize)
        for role, split in zip(("train", "test"), splits, strict=True)
    }
    return out, class_names(builder, label_keys)
