"""A multi-layer perceptron trunk (the MAML sinusoid network is `hidden=(40, 40)`).

`dtype="bfloat16"` computes in bfloat16 with float32 parameters (batch-norm statistics in
float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from mtl.models.trunks import TRUNKS


@TRUNKS.register("mlp")
class MLP(nnx.Module):
    """Flattens its input, then dense layers with ReLU (and optional batch norm) in between."""

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        hidden: Sequence[int] = (256, 256),
        batch_norm: bool = False,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        if not hidden:
            raise ValueError("mlp trunk needs at least one hidden layer (config model.mlp.hidden).")
        sizes = [math.prod(input_shape), *hidden]
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, dtype=dtype, rngs=rngs)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )
        self.norms = nnx.List(
            [nnx.BatchNorm(b, momentum=0.9, dtype=dtype, rngs=rngs) for b in hidden]
            if batch_norm
            else []
        )
        self.out_features = int(hidden[-1])

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.norms:
                h = self.norms[i](h, use_running_average=not train)
            h = nnx.relu(h)
        return h
