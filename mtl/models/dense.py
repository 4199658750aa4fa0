"""A dense layer that multiplies all leading dimensions as one matrix of rows.

`nnx.Linear` on [batch, length, features] contracts a rank-3 input, so its kernel gradient
contracts two dimensions (batch and length) at once. XLA CPU lowers that to a transposed copy
of the output gradient and a matmul with both operands transposed, which its library kernels
do not take: about half the speed of the other matmuls of the step (`benchmarks/bert_blocks.py
--profile`). Flattened to [rows, features] the same gradient is one plain transposed-lhs
matmul. The values are the same up to float summation order; the parameters are `nnx.Linear`'s.
"""

from __future__ import annotations

import jax
from flax import nnx


def rows(x: jax.Array) -> jax.Array:
    """[..., features] -> [rows, features]."""
    return x.reshape(-1, x.shape[-1])


class Dense(nnx.Linear):
    """`nnx.Linear` (same constructor and parameters) applied to [rows, features]."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if inputs.ndim <= 2:
            return super().__call__(inputs)
        out = super().__call__(rows(inputs))
        return out.reshape(*inputs.shape[:-1], out.shape[-1])
