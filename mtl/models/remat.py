"""Rematerialisation of one block: keep its input, recompute its activations in the backward
pass (less memory for one more forward pass of the block).

`nnx.remat` tracks the module's variables across its trace, which fails when the module was
itself merged inside a JAX transform (as the engine's pure steps do: `mtl.models.functional`):
"Cannot mutate ... from a different trace level". Here the block is split into a graph and a
state and `jax.checkpoint` wraps a pure function of the state, so it works at any nesting; the
state the block changes (batch-norm statistics, RNG counters) is written back afterwards.

    h = remat_call(layer, h, mask, train=True)   # same value and gradients as layer(h, mask, ...)
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx


def remat_call(module: nnx.Module, *args: Any, **static: Any) -> Any:
    """`module(*args, **static)` with its activations recomputed in the backward pass.

    `args` are arrays (or trees of arrays); `static` keyword arguments are Python values such
    as `train=True`."""
    graphdef, state = nnx.split(module)

    def pure(state, *args):
        block = nnx.merge(graphdef, state)
        out = block(*args, **static)
        return out, nnx.state(block)

    out, new_state = jax.checkpoint(pure)(state, *args)
    nnx.update(module, new_state)
    return out
