"""MAML's four-block convolutional trunk (Finn et al. 2017; Vinyals et al. 2016).

Each block is a 3x3 convolution with `filters` channels, batch norm and ReLU, and halves the
resolution either with a stride-2 convolution (MAML's Omniglot setting) or with 2x2 max-pooling
(its miniImageNet setting). On Omniglot MAML averages the last feature map over space, giving a
`filters`-wide representation; `pooling="flatten"` keeps the spatial layout instead.

`conv` picks how the convolutions are computed, not what they compute: `"xla"` calls
`lax.conv_general_dilated` (the form for accelerators, and on CPU for `jax.vmap` over per-task
gradients of shared weights, as in PCGrad); `"matmul"` writes each convolution as shifted
slices and one matmul (`mtl.models.conv_ops`), which stays fast when `jax.vmap` gives every task
its own weights, as in the MAML inner loop, and on XLA CPU is also the faster form for one
gradient (`benchmarks/mtl_step.py --conv`). Parameters and outputs are the same in both forms,
so checkpoints move freely between them.

`dtype="bfloat16"` computes in bfloat16 with float32 parameters and batch-norm statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError
from mtl.models.conv_ops import conv_matmul
from mtl.models.trunks import TRUNKS

CONV_IMPLS = ("xla", "matmul")


class ConvBlock(nnx.Module):
    """3x3 conv -> batch norm -> ReLU, downsampling by 2 by stride or max-pool."""

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        downsample: str,
        bn_momentum: float,
        conv: str,
        dtype: str = "float32",
        rngs,
    ):
        self.stride = 2 if downsample == "stride" else 1
        self.conv = nnx.Conv(
            cin, cout, (3, 3), strides=self.stride, padding="SAME", dtype=dtype, rngs=rngs
        )
        self.norm = nnx.BatchNorm(cout, momentum=bn_momentum, dtype=dtype, rngs=rngs)
        self.max_pool = downsample == "maxpool"
        self.conv_impl = conv

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.conv_impl == "matmul":
            dtype = self.conv.dtype or x.dtype
            kernel = self.conv.kernel[...]
            if hasattr(self.conv, "lora_a"):  # LoRA on this conv: its update joins the kernel
                kernel = kernel + self.conv.scale * (self.conv.lora_a[...] @ self.conv.lora_b[...])
            kernel, bias = kernel.astype(dtype), self.conv.bias[...].astype(dtype)
            h = conv_matmul(x.astype(dtype), kernel, bias, self.stride)
        else:
            h = self.conv(x)
        h = nnx.relu(self.norm(h, use_running_average=not train))
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
        conv: str = "xla",
        dtype: str = "float32",
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
        if conv not in CONV_IMPLS:
            raise ConfigError(
                f"conv4 conv must be one of {', '.join(CONV_IMPLS)}, got {conv!r} "
                "(config field model.conv4.conv)."
            )
        if len(input_shape) != 3:
            raise ConfigError(
                f"conv4 needs images of shape (height, width, channels), got {tuple(input_shape)}."
            )
        height, width, channels = input_shape
        cins = [channels] + [filters] * 3
        self.blocks = nnx.List(
            [
                ConvBlock(
                    cin,
                    filters,
                    downsample=downsample,
                    bn_momentum=bn_momentum,
                    conv=conv,
                    dtype=dtype,
                    rngs=rngs,
                )
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

    def stage_blocks(self) -> list[nnx.Module]:
        """The blocks in order, each `block(h, train=...)`: the stages that cross-stitch
        units and MTAN's attention read (`mtl.models.architectures`)."""
        return list(self.blocks)

    def pool(self, h: jax.Array) -> jax.Array:
        """The last block's feature map -> the representation [batch, out_features]."""
        if self.pooling == "mean":
            return jnp.mean(h, axis=(1, 2))
        return h.reshape(h.shape[0], -1)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = x
        for block in self.blocks:
            h = block(h, train=train)
        return self.pool(h)
