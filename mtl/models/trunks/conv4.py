"""MAML's four-block convolutional trunk (Finn et al. 2017; Vinyals et al. 2016).

Each block is a 3x3 convolution with `filters` channels, batch norm and ReLU, and halves the
resolution either with a stride-2 convolution (MAML's Omniglot setting) or with 2x2 max-pooling
(its miniImageNet setting). On Omniglot MAML averages the last feature map over space, giving a
`filters`-wide representation; `pooling="flatten"` keeps the spatial layout instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError
from mtl.models.trunks import TRUNKS


class ConvBlock(nnx.Module):
    """3x3 conv -> batch norm -> ReLU, downsampling by 2 by stride or max-pool."""

    def __init__(self, cin: int, cout: int, *, downsample: str, bn_momentum: float, rngs):
        stride = 2 if downsample == "stride" else 1
        self.conv = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", rngs=rngs)
        self.norm = nnx.BatchNorm(cout, momentum=bn_momentum, rngs=rngs)
        self.max_pool = downsample == "maxpool"

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = nnx.relu(self.norm(self.conv(x), use_running_average=not train))
        if self.max_pool:
            h = nnx.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
        return h


@TRUNKS.register("conv4")
class Conv4(nnx.Module):
    """Four `ConvBlock`s; input [batch, height, width, channels]."""

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        filters: int = 64,
        downsample: str = "stride",
        pooling: str = "mean",
        bn_momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        if downsample not in ("stride", "maxpool"):
            raise ConfigError(
                f"conv4 downsample must be 'stride' or 'maxpool', got {downsample!r} "
                "(config field model.conv4.downsample)."
            )
        if pooling not in ("mean", "flatten"):
            raise ConfigError(
                f"conv4 pooling must be 'mean' or 'flatten', got {pooling!r} "
                "(config field model.conv4.pooling)."
            )
        if len(input_shape) != 3:
            raise ConfigError(
                f"conv4 needs images of shape (height, width, channels), got {tuple(input_shape)}."
            )
        height, width, channels = input_shape
        cins = [channels] + [filters] * 3
        self.blocks = nnx.List(
            [
                ConvBlock(cin, filters, downsample=downsample, bn_momentum=bn_momentum, rngs=rngs)
                for cin in cins
            ]
        )
        self.pooling = pooling
        for _ in range(4):  # SAME stride-2 conv: ceil(n/2); VALID 2x2 pool: floor(n/2)
            height, width = (
                (math.ceil(height / 2), math.ceil(width / 2))
                if downsample == "stride"
                else (height // 2, width // 2)
            )
        if height < 1 or width < 1:
            raise ConfigError(f"conv4 input {tuple(input_shape)} is too small for four blocks.")
        self.out_features = filters if pooling == "mean" else filters * height * width

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = x
        for block in self.blocks:
            h = block(h, train=train)
        if self.pooling == "mean":
            return jnp.mean(h, axis=(1, 2))
        return h.reshape(h.shape[0], -1)
