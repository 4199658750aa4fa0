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
