"""The precision a run computes in: `config.precision` = "float32" | "bfloat16".

In bfloat16 every trunk runs its activations and matmuls / convolutions in bfloat16 while its
parameters, and so the optimizer state and the checkpoints, stay float32 (the usual mixed
precision of TPU and GPU training: no loss scaling is needed, bfloat16 has float32's range).
Attention scores, softmax and normalisation statistics are float32 inside the trunks; the
representation is cast to float32 before the heads, so heads, losses and metrics are float32.

    options = trunk_options("bert", {"num_layers": 2}, "bfloat16")  # -> {..., "dtype": ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.models.trunks import TRUNKS

PRECISIONS = ("float32", "bfloat16")


def of(config: Mapping[str, Any]) -> str:
    """The run's precision (float32 when the config has no `precision` field), checked."""
    precision = config.get("precision") or "float32"
    if precision not in PRECISIONS:
        raise ConfigError(
            f"config precision must be one of {', '.join(PRECISIONS)}, got {precision!r} "
            "(--config.precision=bfloat16)."
        )
    return precision


def trunk_options(name: str, options: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """The trunk's options with its compute `dtype` set for `precision`.

    float32 keeps whatever `model.<trunk>.dtype` says (float32 by default); bfloat16 sets it.
    """
    options = dict(options)
    if precision == "float32":
        return options
    if "dtype" not in TRUNKS.options(name):
        raise ConfigError(
            f"The {name} trunk has no dtype option, so it cannot run in {precision} "
            "(config precision); use --config.precision=float32."
        )
    return options | {"dtype": precision}


def float32(z: Any) -> Any:
    """`z` (an array or a tree of arrays) in float32, as heads and losses read it."""
    return jax.tree.map(
        lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a, z
    )
