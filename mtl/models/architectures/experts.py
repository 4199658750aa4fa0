"""Pieces the mixture-of-experts architectures share: the experts and the gates' input."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError

GATE_INPUTS = ("auto", "inputs", "experts")


class Experts(nnx.Module):
    """Several trunks on the same input; returns their representations as a tuple (each
    [batch, out_features], so the batch stays the leading axis of every leaf)."""

    def __init__(self, trunks: Sequence[nnx.Module]):
        self.experts = nnx.List(list(trunks))
        self.out_features = trunks[0].out_features

    def __call__(self, x: Any, *, train: bool = False) -> tuple[jax.Array, ...]:
        return tuple(expert(x, train=train) for expert in self.experts)


def gate_source(gate_input: str, input_shape: Any, field: str) -> str:
    """What a gate reads: "inputs" (the flattened raw inputs, as MMoE and LibMTL's gates) or
    "experts" (the mean of the experts' representations: for inputs that are not one array,
    such as token ids). "auto" picks "inputs" for array inputs, else "experts"."""
    if gate_input not in GATE_INPUTS:
        raise ConfigError(f"{field} must be one of {', '.join(GATE_INPUTS)}, got {gate_input!r}.")
    arrays = not isinstance(input_shape, Mapping)
    if gate_input == "inputs" and not arrays:
        raise ConfigError(
            f"{field}='inputs' needs inputs that are one array; these are "
            f"{sorted(input_shape)} (text). Set {field}=experts (or auto)."
        )
    if gate_input == "auto":
        return "inputs" if arrays else "experts"
    return gate_input


def gate_width(source: str, input_shape: Any, expert_features: int) -> int:
    """The width of what the gate reads (see `gate_source`)."""
    return math.prod(input_shape) if source == "inputs" else expert_features


def gate_features(source: str, inputs: Any, experts: Sequence[jax.Array]) -> jax.Array:
    """[batch, width] in float32: the flattened inputs, or the experts' mean."""
    if source == "inputs":
        return inputs.reshape(inputs.shape[0], -1).astype(jnp.float32)
    return jnp.mean(jnp.stack([e.astype(jnp.float32) for e in experts]), axis=0)


def mix(weights: jax.Array, experts: Sequence[jax.Array]) -> jax.Array:
    """`sum_e weights[:, e] * experts[e]`: [batch, E] x E x [batch, d] -> [batch, d]."""
    stacked = jnp.stack([e.astype(jnp.float32) for e in experts])
    return jnp.einsum("be,ebd->bd", weights, stacked)
