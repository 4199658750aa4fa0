"""Episode families by name: `config.data.name` picks one; the rest of `config.data` are its
options, checked against the loader's keyword arguments.

A family has `kind` ("classification" or "regression"), `input_shape`, and

    check(split, ways, shots, queries)          # ConfigError if the split cannot supply them
    sample(split, seed, index, *, batch, ways, shots, queries) -> episodes (see episodes.py)
    num_classes(split) -> int | None
    preprocess(raw_inputs) -> model inputs        # what the adapt/predict API applies
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mtl.registry import Registry

FAMILIES: Registry = Registry("episode family")


@FAMILIES.register("sinusoid")
def sinusoid(
    amplitude: Sequence[float] = (0.1, 5.0),
    phase: Sequence[float] = (0.0, math.pi),
    x_range: Sequence[float] = (-5.0, 5.0),
):
    """MAML's sinusoid regression tasks (no data to download)."""
    from mtl.meta.sinusoid import SinusoidFamily

    return SinusoidFamily(tuple(amplitude), tuple(phase), tuple(x_range))


@FAMILIES.register("omniglot")
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


def describe(data_config: Mapping[str, Any]):
    """`(kind, input_shape, preprocess)` of a family without loading its data.

    `preprocess` maps inputs in the data set's own form (Omniglot: images as read from the
    PNG files) to what the model was trained on; the adapt/predict API applies it.
    """
    name, options = check_config(data_config)
    if name == "sinusoid":
        from mtl.meta.sinusoid import SinusoidFamily

        return "regression", (1,), SinusoidFamily().preprocess
    from mtl.data.omniglot import preprocess_omniglot

    size = int(options.get("image_size", 28))
    return "classification", (size, size, 1), lambda images: preprocess_omniglot(images, size)
