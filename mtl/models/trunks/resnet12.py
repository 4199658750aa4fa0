"""The ResNet-12 of few-shot learning (MetaOptNet, Lee et al. 2019; RFS, Tian et al. 2020).

Four residual blocks, each three 3x3 convolutions with batch norm and LeakyReLU(0.1) (the last
one after the sum), a 1x1 convolution and batch norm on the shortcut, and a 2x2 max-pool after
the block; `channels` (64, 160, 320, 640) by default, then the mean over space. It is the
standard trunk of miniImageNet / tieredImageNet few-shot results; with four halvings it takes
images of 16x16 and more (Omniglot's 28x28 leaves a 1x1 map, 84x84 a 5x5 one).

There is no separate stem: the first block reads the image. Parameter paths:
`layers/{i}/conv1|norm1|conv2|norm2|conv3|norm3` and `layers/{i}/downsample/conv|norm`, so
layer-wise fine-tuning strategies see the four blocks, and the `resnet_fsdp` sharding preset
of `mtl.models.trunks.resnet` splits its convolutions too. DropBlock (MetaOptNet's regulariser)
is not included.

`dtype` and `remat` as for `resnet`: bfloat16 activations with float32 parameters and float32
batch-norm statistics; each block recomputed in the backward pass. `conv="matmul"` computes
the convolutions as shifted slices and one matmul (`mtl.models.conv_ops`), as conv4 can: the
same parameters and outputs, and the fast form on XLA CPU when `jax.vmap` gives every episode
its own weights (MAML's inner loop), where `lax.conv` becomes a slow grouped convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError
from mtl.models.conv_ops import conv_matmul
from mtl.models.remat import remat_call
from mtl.models.trunks import TRUNKS
from mtl.models.trunks.resnet import (
    Downsample,
    batch_norm,
    check_images,
    check_input_shape,
    compute_dtype,
    conv,
)

MIN_SIZE = 16  # four 2x2 max-pools (floor) leave at least 1x1
CONV_FORMS = ("xla", "matmul")


def _apply(layer: nnx.Conv, x: jax.Array, form: str) -> jax.Array:
    """`layer(x)` in the chosen form; stride 1 and padding k // 2 are SAME for 3x3 and 1x1, so
    both forms compute the same convolution."""
    if form == "xla":
        return layer(x)
    dtype = layer.dtype or x.dtype
    return conv_matmul(x.astype(dtype), layer.kernel[...].astype(dtype), None)


class Block(nnx.Module):
    """Three conv-norm-LeakyReLU units with a 1x1 shortcut, then a 2x2 max-pool."""

    def __init__(self, cin, cout, momentum, slope, dtype, rngs, form="xla"):
        self.form = form
        self.conv1 = conv(cin, cout, 3, 1, dtype, rngs)
        self.norm1 = batch_norm(cout, momentum, dtype, rngs)
        self.conv2 = conv(cout, cout, 3, 1, dtype, rngs)
        self.norm2 = batch_norm(cout, momentum, dtype, rngs)
        self.conv3 = conv(cout, cout, 3, 1, dtype, rngs)
        self.norm3 = batch_norm(cout, momentum, dtype, rngs)
        self.downsample = Downsample(cin, cout, 1, momentum, dtype, rngs)
        self.slope = slope

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        act = lambda v: nnx.leaky_relu(v, self.slope)
        conv = lambda layer, v: _apply(layer, v, self.form)
        h = act(self.norm1(conv(self.conv1, x), use_running_average=not train))
        h = act(self.norm2(conv(self.conv2, h), use_running_average=not train))
        h = self.norm3(conv(self.conv3, h), use_running_average=not train)
        shortcut = self.downsample.norm(
            conv(self.downsample.conv, x), use_running_average=not train
        )
        h = act(h + shortcut)
        return nnx.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")


@TRUNKS.register("resnet12")
class ResNet12(nnx.Module):
    """Four `Block`s and global average pooling; input [batch, height, width, channels] of at
    least 16x16, output [batch, channels[-1]]."""

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        channels: Sequence[int] = (64, 160, 320, 640),
        leaky_slope: float = 0.1,
        bn_momentum: float = 0.9,
        conv: str = "xla",
        dtype: str = "float32",
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if conv not in CONV_FORMS:
            raise ConfigError(
                f"model.resnet12.conv must be one of {', '.join(CONV_FORMS)}, got {conv!r}."
            )
        channels = tuple(channels)
        if len(channels) != 4 or not all(isinstance(c, int) and c >= 1 for c in channels):
            raise ConfigError(
                f"model.resnet12.channels must be four positive ints (one per block), got "
                f"{channels}."
            )
        compute = compute_dtype("resnet12", dtype)
        self.in_channels = check_input_shape("resnet12", input_shape, MIN_SIZE)
        cins = (self.in_channels, *channels[:-1])
        self.layers = nnx.List(
            [
                Block(cin, cout, bn_momentum, leaky_slope, compute, rngs, form=conv)
                for cin, cout in zip(cins, channels, strict=True)
            ]
        )
        self.out_features = channels[-1]
        self.remat = remat

    def stage_blocks(self) -> list[nnx.Module]:
        """The four blocks, each `block(h, train=...)` (see `Conv4.stage_blocks`)."""
        return list(self.layers)

    def pool(self, h: jax.Array) -> jax.Array:
        """Global average pooling of the last feature map."""
        return jnp.mean(h, axis=(1, 2))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_images("resnet12", x.shape, self.in_channels, MIN_SIZE)
        h = x
        for layer in self.layers:  # remat: recompute each block's activations in the backward pass
            h = remat_call(layer, h, train=train) if self.remat else layer(h, train=train)
        return jnp.mean(h, axis=(1, 2))
