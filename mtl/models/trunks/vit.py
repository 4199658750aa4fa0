"""A Vision Transformer (Dosovitskiy et al. 2021) in timm's `VisionTransformer` layout, so that
timm ViT weights convert one to one (`mtl.convert.vision`).

The image is cut into `patch_size` x `patch_size` patches, each projected to `hidden_size` (a
convolution with stride = kernel = patch), a learned [CLS] token is put in front and learned
position embeddings are added; then `depth` pre-norm blocks,

    x = x + attention(norm(x));  x = x + output(gelu(intermediate(norm(x)))),

and a final layer norm over every token. The output is the [CLS] token's (`pooling="cls"`,
timm's `global_pool="token"`) or the mean over the patch tokens (`pooling="mean"`). timm's own
`global_pool="avg"` instead normalises after averaging (its `fc_norm`); its checkpoints do not
convert.

Parameter paths follow the `bert` trunk where the role is the same, so that LoRA's default
targets, the sharding presets and the fine-tuning strategies apply unchanged:
`embeddings/patch/kernel`, `embeddings/cls_token`, `embeddings/position`,
`layers/{i}/attention/norm|query|key|value|output`, `layers/{i}/norm|intermediate|output`, and
the final norm `norm` (which layer-wise learning-rate decay and gradual unfreezing put at the
top, with BERT's pooler).

`dtype="bfloat16"` runs activations and matmuls in bfloat16 with float32 parameters; attention
scores, softmax and layer-norm statistics stay float32. `remat=True` recomputes each block's
activations in the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from mtl.errors import ConfigError, DataError
from mtl.models.dense import Dense
from mtl.models.remat import remat_call
from mtl.models.trunks import TRUNKS
from mtl.models.trunks.resnet import check_images, compute_dtype

POOLINGS = ("cls", "mean")
_INIT = nnx.initializers.truncated_normal(0.02)  # timm's init of linear layers and positions

_BLOCK = r"trunk/layers/\d+/"
# Rules for `mtl.sharding` (merged into its PRESETS), as the bert presets: `vit_fsdp` splits
# every large matrix along its largest dimension the fsdp axis divides; `vit_megatron` splits
# attention heads and MLP columns over `model`, the output projections by rows to match.
SHARDING_PRESETS: dict[str, tuple[tuple[str, object], ...]] = {
    "vit_fsdp": (
        (r"trunk/embeddings/(patch/kernel|position)$", "fsdp"),
        (_BLOCK + r"(attention/(query|key|value|output)|intermediate|output)/kernel$", "fsdp"),
    ),
    "vit_megatron": (
        (_BLOCK + r"(attention/(query|key|value)|intermediate)/kernel$", (None, "model")),
        (_BLOCK + r"(attention/(query|key|value)|intermediate)/bias$", ("model",)),
        (_BLOCK + r"(attention/)?output/kernel$", ("model", None)),
    ),
}


def gelu(x: jax.Array) -> jax.Array:
    """PyTorch's `nn.GELU()` (the erf form), written with `erf` as in the bert trunk (XLA CPU
    expands `jax.nn.gelu(approximate=False)`'s `erfc` into costlier code)."""
    return 0.5 * x * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0))))


def _dense(cin: int, cout: int, use_bias: bool, dtype, rngs: nnx.Rngs) -> Dense:
    return Dense(cin, cout, use_bias=use_bias, kernel_init=_INIT, dtype=dtype, rngs=rngs)


def _layer_norm(hidden: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(hidden, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class Embeddings(nnx.Module):
    """Patch projection, [CLS] token in front, learned position embeddings added."""

    def __init__(self, image_size, patch_size, channels, hidden, dtype, rngs):
        p = patch_size
        self.patch = nnx.Conv(
            channels, hidden, (p, p), strides=p, padding="VALID", dtype=dtype, rngs=rngs
        )
        self.cls_token = nnx.Param(nnx.initializers.normal(1e-6)(rngs.params(), (1, 1, hidden)))
        tokens = (image_size // patch_size) ** 2 + 1
        self.position = nnx.Param(_INIT(rngs.params(), (1, tokens, hidden)))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.patch(x)  # [batch, rows, cols, hidden]: patches in row-major order, as timm's
        h = h.reshape(h.shape[0], -1, h.shape[-1])
        cls = jnp.broadcast_to(self.cls_token[...].astype(h.dtype), (h.shape[0], 1, h.shape[-1]))
        return jnp.concatenate([cls, h], axis=1) + self.position[...].astype(h.dtype)


class Attention(nnx.Module):
    """Pre-norm multi-head self-attention (the residual is added by `Block`)."""

    def __init__(self, hidden, num_heads, eps, qkv_bias, dtype, rngs):
        self.num_heads = num_heads
        self.norm = _layer_norm(hidden, eps, dtype, rngs)
        self.query = _dense(hidden, hidden, qkv_bias, dtype, rngs)
        self.key = _dense(hidden, hidden, qkv_bias, dtype, rngs)
        self.value = _dense(hidden, hidden, qkv_bias, dtype, rngs)
        self.output = _dense(hidden, hidden, True, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, hidden = x.shape
        h = self.norm(x)
        split = lambda t: t.reshape(batch, length, self.num_heads, hidden // self.num_heads)
        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        # Scores and softmax in float32 whatever the compute dtype.
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores / math.sqrt(q.shape[-1]), axis=-1).astype(v.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, hidden)
        return self.output(context)


class Block(nnx.Module):
    """x + attention(norm(x)), then x + output(gelu(intermediate(norm(x))))."""

    def __init__(self, hidden, num_heads, mlp_hidden, eps, qkv_bias, dtype, rngs):
        self.attention = Attention(hidden, num_heads, eps, qkv_bias, dtype, rngs)
        self.norm = _layer_norm(hidden, eps, dtype, rngs)
        self.intermediate = _dense(hidden, mlp_hidden, True, dtype, rngs)
        self.output = _dense(mlp_hidden, hidden, True, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(x)
        return x + self.output(gelu(self.intermediate(self.norm(x))))


@TRUNKS.register("vit")
class ViT(nnx.Module):
    """timm's VisionTransformer without its classifier. Defaults are ViT-B/16 at 224x224.

    `encode` returns the final-normed tokens [batch, 1 + patches, hidden] (timm's
    `forward_features`); calling the module returns the pooled [batch, hidden_size].
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        image_size: int = 224,
        patch_size: int = 16,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        pooling: str = "cls",
        dtype: str = "float32",
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        _check_options(input_shape, image_size, patch_size, hidden_size, num_heads, pooling)
        compute = compute_dtype("vit", dtype)
        self.in_channels = int(input_shape[2])
        self.image_size = image_size
        self.embeddings = Embeddings(
            image_size, patch_size, self.in_channels, hidden_size, compute, rngs
        )
        mlp_hidden = int(hidden_size * mlp_ratio)  # as timm: int(dim * mlp_ratio)
        self.layers = nnx.List(
            [
                Block(hidden_size, num_heads, mlp_hidden, layer_norm_eps, qkv_bias, compute, rngs)
                for _ in range(depth)
            ]
        )
        self.norm = _layer_norm(hidden_size, layer_norm_eps, compute, rngs)
        self.pooling = pooling
        self.out_features = hidden_size
        self.remat = remat

    def _blocks(self, x: jax.Array) -> jax.Array:
        """The tokens after the last block, before the final norm."""
        size = self.image_size
        check_images("vit", x.shape, self.in_channels, size)
        if x.shape[1:3] != (size, size):
            raise DataError(
                f"The vit trunk was built for {size}x{size} images (model.vit.image_size), got "
                f"{x.shape[1]}x{x.shape[2]}."
            )
        h = self.embeddings(x)
        for layer in self.layers:  # remat: recompute each block's activations in the backward pass
            h = remat_call(layer, h) if self.remat else layer(h)
        return h

    def encode(self, x: jax.Array) -> jax.Array:
        """Final-normed tokens [batch, 1 + patches, hidden] ([CLS] first)."""
        return self.norm(self._blocks(x))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout, no batch statistics
        tokens = self._blocks(x)
        if self.pooling == "cls":
            return self.norm(tokens[:, 0])  # the norm is per token: only the one read
        return jnp.mean(self.norm(tokens[:, 1:]), axis=1)


def _check_options(input_shape, image_size, patch_size, hidden_size, num_heads, pooling):
    """`ConfigError`s for options that cannot work, before anything is built."""
    if pooling not in POOLINGS:
        raise ConfigError(
            f"model.vit.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}."
        )
    if patch_size < 1 or image_size % patch_size:
        raise ConfigError(
            f"model.vit.image_size={image_size} must be a multiple of model.vit.patch_size="
            f"{patch_size}."
        )
    if num_heads < 1 or hidden_size % num_heads:
        raise ConfigError(
            f"model.vit.hidden_size={hidden_size} is not divisible by model.vit.num_heads="
            f"{num_heads}."
        )
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(
            f"The vit trunk needs images of shape (height, width, channels), got inputs of "
            f"shape {tuple(input_shape)}; use an image data source."
        )
    if tuple(input_shape[:2]) != (image_size, image_size):
        raise ConfigError(
            f"The data's images are {input_shape[0]}x{input_shape[1]} and model.vit.image_size="
            f"{image_size}: set --config.model.vit.image_size={input_shape[0]} (square images; "
            "pretrained weights fix the size, so resize the images to theirs instead)."
        )
