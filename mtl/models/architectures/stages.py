"""Trunks that expose their stages, for architectures that work between them (cross-stitch,
MTAN). A trunk exposes them with two methods:

    trunk.stage_blocks() -> [block, ...]   # each block(h, train=...) -> h
    trunk.pool(h) -> [batch, out_features]  # the last stage's output -> the representation

so that `trunk(x)` equals `pool(block_n(...block_1(x)))`. conv4, resnet12 and resnet do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError


def require_stages(trunk: nnx.Module, architecture: str) -> None:
    """`ConfigError` unless `trunk` has `stage_blocks()` and `pool(h)`."""
    if not (hasattr(trunk, "stage_blocks") and hasattr(trunk, "pool")):
        raise ConfigError(
            f"model.architecture={architecture} works between the trunk's stages, and the "
            f"{type(trunk).__name__} trunk does not expose them. Use a trunk that does (conv4, "
            "resnet12, resnet), or give yours stage_blocks() and pool(h) "
            "(mtl/models/architectures/stages.py)."
        )


class StageFeatures(nnx.Module):
    """The trunk's stages; returns every stage's output (each [batch, h, w, c] for the conv
    trunks), so that the tasks can read them all (MTAN)."""

    def __init__(self, trunk: nnx.Module):
        self.trunk = trunk
        self.out_features = trunk.out_features

    def __call__(self, x: Any, *, train: bool = False) -> tuple[jax.Array, ...]:
        outs, h = [], x
        for block in self.trunk.stage_blocks():
            h = block(h, train=train)
            outs.append(h)
        return tuple(outs)


def stage_shapes(trunk: nnx.Module, input_shape: Any) -> list[tuple[int, ...]]:
    """The shape of every stage's output for one example, computed abstractly (no FLOPs)."""
    graphdef, state = nnx.split(StageFeatures(trunk))
    run = lambda state, x: nnx.merge(graphdef, state)(x)  # noqa: E731
    example = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return [tuple(o.shape[1:]) for o in jax.eval_shape(run, state, example)]
