"""MMoE (Ma et al. 2018) and DSelect-k (Hazimeh et al. 2021): shared experts, and per task a
gate that mixes them and a tower on the mixture.

MMoE's gate is a softmax over `W x`. DSelect-k's is `k` binary selectors: selector i reads
`m = ceil(log2 E)` logits `z_i = W_i x`, passes each through the smooth step `S` (0 below
`-gamma/2`, 1 above `gamma/2`, a cubic between), and puts weight
`prod_j (S(z_ij) if bit j of e is set else 1 - S(z_ij))` on expert e; the selectors are mixed
by `softmax(W_alpha x)`. Unlike a softmax gate it can reach exactly sparse weights. The paper's
entropy regulariser, which pushes selectors to be binary sooner, is not included. With E not
a power of two, the codes past E select nothing (their share of a selector is dropped).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError
from mtl.models.architectures import ARCHITECTURES
from mtl.models.architectures import experts as ex
from mtl.models.heads import DenseHead


class SoftmaxGate(nnx.Module):
    """MMoE's gate: `softmax(W g + b)` over the experts."""

    def __init__(self, width: int, num_experts: int, *, rngs: nnx.Rngs):
        self.logits = nnx.Linear(width, num_experts, rngs=rngs)

    def __call__(self, g: jax.Array) -> jax.Array:
        return jax.nn.softmax(self.logits(g), axis=-1)


def smooth_step(t: jax.Array, gamma: float) -> jax.Array:
    """0 for t <= -gamma/2, 1 for t >= gamma/2, `-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2` between."""
    cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    return jnp.where(t <= -gamma / 2, 0.0, jnp.where(t >= gamma / 2, 1.0, cubic))


def binary_codes(num_experts: int) -> tuple[tuple[int, ...], ...]:
    """E rows, row e the m bits of e (m = ceil(log2 E); m = 0 for one expert). A tuple, so the
    module keeps it as static (hashable) structure."""
    bits = max(math.ceil(math.log2(num_experts)), 0)
    return tuple(tuple((e >> j) & 1 for j in range(bits)) for e in range(num_experts))


def _symmetric_uniform(limit: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


class DSelectKGate(nnx.Module):
    """DSelect-k's gate: `k` selectors over the experts, mixed by a softmax."""

    def __init__(self, width: int, num_experts: int, k: int, gamma: float, *, rngs: nnx.Rngs):
        self.codes = binary_codes(num_experts)
        self.k, self.gamma, self.bits = k, gamma, len(self.codes[0])
        # The official code starts the selector logits near 0 (uniform in +-gamma/100): every
        # expert starts with some weight and the smooth step is not yet saturated.
        small = _symmetric_uniform(gamma / 100)
        self.selector_logits = nnx.Linear(
            width, k * self.bits, kernel_init=small, bias_init=small, rngs=rngs
        )
        self.selector_mix = nnx.Linear(width, k, rngs=rngs)

    def __call__(self, g: jax.Array) -> jax.Array:
        logits = self.selector_logits(g).reshape(g.shape[0], self.k, self.bits)
        s = smooth_step(logits, self.gamma)
        codes = jnp.asarray(self.codes, jnp.float32).reshape(len(self.codes), self.bits)  # [E, m]
        # [batch, k, E]: the product over bits of S or 1 - S as bit j of e is set or not.
        per_bit = codes * s[:, :, None, :] + (1 - codes) * (1 - s[:, :, None, :])
        selectors = jnp.prod(per_bit, axis=-1)
        alpha = jax.nn.softmax(self.selector_mix(g), axis=-1)  # [batch, k]
        return jnp.einsum("bk,bke->be", alpha, selectors)


class GatedHead(nnx.Module):
    """A task's gate over the shared experts' representations, then its tower."""

    def __init__(self, gate: nnx.Module, source: str, tower: DenseHead):
        self.gate, self.source, self.tower = gate, source, tower

    def __call__(self, z: Sequence[jax.Array], *, inputs: Any = None, train: bool = False):
        weights = self.gate(ex.gate_features(self.source, inputs, z))
        return self.tower(ex.mix(weights, z))


def _check_experts(num_experts: int, field: str) -> None:
    if num_experts < 1:
        raise ConfigError(f"{field} must be at least 1, got {num_experts}.")


def _gated(
    make_trunk: Callable[[], nnx.Module],
    tasks: Sequence,
    input_shape: Any,
    num_experts: int,
    gate_input: str,
    make_gate: Callable[[int], nnx.Module],
    field: str,
    rngs: nnx.Rngs,
):
    _check_experts(num_experts, f"{field}.num_experts")
    source = ex.gate_source(gate_input, input_shape, f"{field}.gate_input")
    shared = ex.Experts([make_trunk() for _ in range(num_experts)])
    width = ex.gate_width(source, input_shape, shared.out_features)
    heads = {
        t.name: GatedHead(
            make_gate(width),
            source,
            DenseHead(shared.out_features, t.num_outputs, hidden=t.head_hidden, rngs=rngs),
        )
        for t in tasks
    }
    return shared, heads


@ARCHITECTURES.register("mmoe")
def mmoe(make_trunk, tasks, input_shape, *, num_experts: int = 4, gate_input: str = "auto", rngs):
    """`num_experts` trunks; per task a softmax gate (reading `gate_input`) and a tower."""
    make_gate = lambda width: SoftmaxGate(width, num_experts, rngs=rngs)
    return _gated(
        make_trunk, tasks, input_shape, num_experts, gate_input, make_gate,
        "model.architectures.mmoe", rngs,
    )  # fmt: skip


@ARCHITECTURES.register("dselect_k")
def dselect_k(
    make_trunk,
    tasks,
    input_shape,
    *,
    num_experts: int = 4,
    k: int = 2,
    gamma: float = 1.0,
    gate_input: str = "auto",
    rngs,
):
    """`num_experts` trunks; per task a DSelect-k gate with `k` selectors and a tower."""
    field = "model.architectures.dselect_k"
    if k < 1:
        raise ConfigError(f"{field}.k must be at least 1, got {k}.")
    if gamma <= 0:
        raise ConfigError(f"{field}.gamma must be positive, got {gamma}.")
    make_gate = lambda width: DSelectKGate(width, num_experts, k, gamma, rngs=rngs)
    return _gated(make_trunk, tasks, input_shape, num_experts, gate_input, make_gate, field, rngs)
