"""ResNet (He et al. 2016) in torchvision's layout, so that torchvision and timm ImageNet
weights convert one to one (`mtl.convert.vision`).

A 7x7 stride-2 convolution, batch norm, ReLU and a 3x3 stride-2 max-pool (the stem), then four
stages of residual blocks with `width`, 2`width`, 4`width` and 8`width` channels, each stage
after the first halving the resolution, then the mean over space. No classifier: the heads are
ours. Blocks are BasicBlocks (two 3x3 convolutions; depths 18 and 34) or Bottlenecks (1x1, 3x3,
1x1 with 4x the channels out; depths 26, 50, 101, 152) with the stride on the 3x3 convolution
(torchvision's "ResNet v1.5"). A block whose input and output differ in shape adds its input
through a 1x1 convolution and batch norm (`downsample`).

`stem="cifar"` replaces the stem with one 3x3 stride-1 convolution and no max-pool, the usual
ResNet for 32x32 images; the blocks are unchanged.

Parameter paths: the stem under `embeddings/` (`embeddings/conv/kernel`, `embeddings/norm/*`),
the blocks of all stages as one list `layers/{i}/` (`conv1`, `norm1`, ..., `downsample/conv`,
`downsample/norm`), so that layer-wise fine-tuning strategies see the blocks in order. Batch
norm keeps its running statistics in `nnx.BatchStat` (`mean`, `var`).

`dtype="bfloat16"` runs convolutions and activations in bfloat16; parameters stay float32 and
batch-norm statistics are computed in float32 (Flax promotes them). `remat=True` recomputes each
block's activations in the backward pass instead of keeping them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError, DataError
from mtl.models.remat import remat_call
from mtl.models.trunks import TRUNKS

# depth -> (block, blocks per stage); torchvision's and timm's table.
DEPTHS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    26: ("bottleneck", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
STEMS = ("imagenet", "cifar")
DTYPES = ("float32", "bfloat16")

# Rules for `mtl.sharding` (merged into its PRESETS): every convolution kernel of the trunk
# split along its largest dimension the fsdp axis divides (output channels, mostly); batch-norm
# parameters and statistics are small and stay replicated. The paths also fit `resnet12`.
SHARDING_PRESETS: dict[str, tuple[tuple[str, object], ...]] = {
    "resnet_fsdp": ((r"trunk/(embeddings|layers/\d+)/(.+/)?conv\d?/kernel$", "fsdp"),),
}

# torchvision initialises convolutions with He normal (fan out) for the ReLUs after them.
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def compute_dtype(trunk: str, dtype: str) -> jnp.dtype:
    """The activation dtype of a trunk's `dtype` option, or a `ConfigError` naming the field."""
    if dtype not in DTYPES:
        raise ConfigError(
            f"model.{trunk}.dtype must be one of {', '.join(DTYPES)}, got {dtype!r} (parameters "
            "stay float32 either way)."
        )
    return jnp.dtype(dtype)


def conv(cin: int, cout: int, size: int, stride: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """A bias-free `size`x`size` convolution padded by `size // 2` on each side, as PyTorch's
    `padding=size // 2` (not "SAME", which pads stride-2 inputs of even size on one side only)."""
    pad = size // 2
    return nnx.Conv(
        cin,
        cout,
        (size, size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=CONV_INIT,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def batch_norm(channels: int, momentum: float, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """PyTorch's BatchNorm2d (eps 1e-5; its momentum 0.1 is Flax's 0.9)."""
    return nnx.BatchNorm(
        channels,
        momentum=momentum,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class Downsample(nnx.Module):
    """The shortcut of a block that changes shape: 1x1 convolution (with the block's stride)
    and batch norm."""

    def __init__(self, cin, cout, stride, momentum, dtype, rngs):
        self.conv = conv(cin, cout, 1, stride, dtype, rngs)
        self.norm = batch_norm(cout, momentum, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.norm(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
    """relu(x' + norm2(conv2(relu(norm1(conv1(x)))))), x' the input or its `downsample`."""

    def __init__(self, cin, planes, stride, momentum, dtype, rngs):
        self.conv1 = conv(cin, planes, 3, stride, dtype, rngs)
        self.norm1 = batch_norm(planes, momentum, dtype, rngs)
        self.conv2 = conv(planes, planes, 3, 1, dtype, rngs)
        self.norm2 = batch_norm(planes, momentum, dtype, rngs)
        changes_shape = stride != 1 or cin != planes
        self.downsample = (
            Downsample(cin, planes, stride, momentum, dtype, rngs) if changes_shape else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train))
        h = self.norm2(self.conv2(h), use_running_average=not train)
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        return nnx.relu(h + shortcut)


class Bottleneck(nnx.Module):
    """1x1 to `planes`, 3x3 (carrying the stride), 1x1 to 4 `planes`; residual as BasicBlock."""

    def __init__(self, cin, planes, stride, momentum, dtype, rngs):
        cout = planes * EXPANSION["bottleneck"]
        self.conv1 = conv(cin, planes, 1, 1, dtype, rngs)
        self.norm1 = batch_norm(planes, momentum, dtype, rngs)
        self.conv2 = conv(planes, planes, 3, stride, dtype, rngs)
        self.norm2 = batch_norm(planes, momentum, dtype, rngs)
        self.conv3 = conv(planes, cout, 1, 1, dtype, rngs)
        self.norm3 = batch_norm(cout, momentum, dtype, rngs)
        changes_shape = stride != 1 or cin != cout
        self.downsample = (
            Downsample(cin, cout, stride, momentum, dtype, rngs) if changes_shape else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train))
        h = nnx.relu(self.norm2(self.conv2(h), use_running_average=not train))
        h = self.norm3(self.conv3(h), use_running_average=not train)
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        return nnx.relu(h + shortcut)


class Stem(nnx.Module):
    """conv, batch norm, ReLU (and for `imagenet` a 3x3 stride-2 max-pool)."""

    def __init__(self, channels, width, stem, momentum, dtype, rngs):
        big = stem == "imagenet"
        self.conv = conv(channels, width, 7 if big else 3, 2 if big else 1, dtype, rngs)
        self.norm = batch_norm(width, momentum, dtype, rngs)
        self.max_pool = big

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = nnx.relu(self.norm(self.conv(x), use_running_average=not train))
        if self.max_pool:  # PyTorch pads a max-pool with -inf, as `nnx.max_pool` does
            h = nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return h


def check_images(trunk: str, shape: Sequence[int], channels: int, min_size: int = 1) -> None:
    """`DataError` unless `shape` is [batch, height, width, `channels`] with both sides at
    least `min_size`: the same check at build time (on the data's shape) and at call time."""
    if len(shape) != 4 or shape[-1] != channels:
        raise DataError(
            f"The {trunk} trunk takes images [batch, height, width, {channels}] (channels last, "
            f"the channel count it was built for), got an array of shape {tuple(shape)}."
        )
    if min(shape[1:3]) < min_size:
        raise DataError(
            f"The {trunk} trunk needs images of at least {min_size}x{min_size}, got "
            f"{shape[1]}x{shape[2]}: resize the images (config data.image_size, if the source "
            "has one)."
        )


def check_input_shape(trunk: str, input_shape: Sequence[int], min_size: int = 1) -> int:
    """The channel count of an image `input_shape` (height, width, channels), else a
    `ConfigError` naming the shape."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(
            f"The {trunk} trunk needs images of shape (height, width, channels), got inputs of "
            f"shape {tuple(input_shape)}; use an image data source."
        )
    if min(input_shape[:2]) < min_size:
        raise ConfigError(
            f"The {trunk} trunk needs images of at least {min_size}x{min_size}, the data's are "
            f"{input_shape[0]}x{input_shape[1]}: resize them (config data.image_size, if the "
            "source has one)."
        )
    return int(input_shape[2])


@TRUNKS.register("resnet")
class ResNet(nnx.Module):
    """torchvision's ResNet without its classifier; input [batch, height, width, channels],
    output the mean of the last feature map over space, [batch, 8 * width * expansion]."""

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        depth: int = 18,
        width: int = 64,
        stem: str = "imagenet",
        bn_momentum: float = 0.9,
        dtype: str = "float32",
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if depth not in DEPTHS:
            raise ConfigError(
                f"model.resnet.depth must be {', '.join(map(str, list(DEPTHS)[:-1]))} or "
                f"{list(DEPTHS)[-1]}, got {depth}."
            )
        if stem not in STEMS:
            raise ConfigError(
                f"model.resnet.stem must be 'imagenet' (7x7 stride 2 and max-pool) or 'cifar' "
                f"(3x3 stride 1, for small images), got {stem!r}."
            )
        if width < 1:
            raise ConfigError(f"model.resnet.width must be >= 1, got {width}.")
        compute = compute_dtype("resnet", dtype)
        self.in_channels = check_input_shape("resnet", input_shape)
        kind, blocks = DEPTHS[depth]
        make = BasicBlock if kind == "basic" else Bottleneck
        self.embeddings = Stem(self.in_channels, width, stem, bn_momentum, compute, rngs)
        layers, cin = [], width
        for stage, count in enumerate(blocks):
            planes = width * 2**stage
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(make(cin, planes, stride, bn_momentum, compute, rngs))
                cin = planes * EXPANSION[kind]
        self.layers = nnx.List(layers)
        self.out_features = cin
        self.remat = remat

    def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """The last feature map [batch, h, w, out_features] (timm's `forward_features`)."""
        check_images("resnet", x.shape, self.in_channels)
        h = self.embeddings(x, train=train)
        for layer in self.layers:  # remat: recompute each block's activations in the backward pass
            h = remat_call(layer, h, train=train) if self.remat else layer(h, train=train)
        return h

    def stage_blocks(self) -> list[nnx.Module]:
        """The stem and every residual block, each `block(h, train=...)` (see
        `Conv4.stage_blocks`)."""
        return [self.embeddings, *self.layers]

    def pool(self, h: jax.Array) -> jax.Array:
        """Global average pooling of the last feature map."""
        return jnp.mean(h, axis=(1, 2))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.pool(self.features(x, train=train))


# Options that pretrained weights depend on: a checkpoint and the config must agree on them.
ARCHITECTURE = ("depth", "width", "stem")
