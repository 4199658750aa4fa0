"""A dense layer that multiplies all leading dimensions as one matrix of rows.

`nnx.Linear` on [batch, length, features] contracts a rank-3 input, so its kernel gradient
contracts two dimensions (batch and length) at once. XLA CPU lowers that to a transposed copy
of the output gradient and a matmul with both operands transposed, which its library kernels
do not take: about half the speed of the other matmuls of the step (`benchmarks/bert_blocks.py
--profile`). Flattened to [rows, features] the same gradient is one plain transposed-lhs
matmul. The values are the same up to float summation order; the parameters are `nnx.Linear`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx


def on_rows(matmul: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """`matmul` applied to `x` [..., features] flattened to [rows, features], its output
    [rows, out] given back the leading dimensions: [..., out]."""
    out = matmul(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


class Dense(nnx.Linear):
    """`nnx.Linear` (same constructor and parameters) applied to [rows, features]."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return on_rows(super().__call__, inputs)
