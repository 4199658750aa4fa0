"""Vision checkpoints -> our trunks: torchvision / timm ResNets -> `resnet`, timm ViTs -> `vit`.

    trunk = load_resnet("resnet50.safetensors")         # depth, width, stem read from the tensors
    trunk = load_vit("vit_small.pth", num_heads=6)      # sizes read from the tensors
    trunk = resnet_from_torch(torchvision.models.resnet18(weights="DEFAULT"))
    trunk = vit_from_torch(timm.create_model("vit_small_patch16_224", pretrained=True))

A file is a `.safetensors` file (read without PyTorch) or a PyTorch state dict (`.pth`, `.pt`,
`.bin`; needs torch). The architecture is read from the tensors' names and shapes
(`resnet_options`, `vit_options`); only a ViT's number of heads is not in them. Options given
as keywords override what is read (and say a run's choices: `pooling`, `dtype`, `remat`).

The mapping is one table per family, as in `mtl.convert.hf_bert`: our parameter path, the
checkpoint's tensor name, a transform (`{i}` is our block index, `{block}` torchvision's
`layer{stage}.{index}`). PyTorch convolutions are [out, in, h, w] and linear weights [out, in];
NNX's kernels are [h, w, in, out] and [in, out]. Batch-norm running statistics become the
trunk's `nnx.BatchStat`s. timm fuses a ViT block's query, key and value into one `qkv` tensor
(rows: query, then key, then value); its rows are split into our three layers.

The classifier (`fc.` of a ResNet, `head.` of a ViT) and batch norm's `num_batches_tracked`
are expected to go unused; `drop=[regex]` leaves out more. Anything else left over or missing
on either side, and every shape mismatch, is listed in one `ConversionError`
(`mtl.convert.table.convert`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from mtl.convert.table import (
    ConversionError,
    Layout,
    Row,
    build_trunk,
    conv_kernel,
    keep,
    read_weights,
    state_dict_of_tensors,
    transpose,
)
from mtl.errors import DataError
from mtl.models.trunks.resnet import DEPTHS, ResNet
from mtl.models.trunks.vit import ViT

__all__ = [
    "RESNET_LAYOUT",
    "VIT_LAYOUT",
    "ConversionError",
    "load_resnet",
    "load_vit",
    "resnet_from_torch",
    "resnet_options",
    "resnet_table",
    "vit_from_torch",
    "vit_options",
    "vit_table",
]

# --- ResNet (torchvision; timm's resnet18/26/34/50/101/152 use the same names) ---------------

RESNET_STEM: tuple[Row, ...] = (
    ("embeddings/conv/kernel", "conv1.weight", conv_kernel),
    ("embeddings/norm/scale", "bn1.weight", keep),
    ("embeddings/norm/bias", "bn1.bias", keep),
    ("embeddings/norm/mean", "bn1.running_mean", keep),
    ("embeddings/norm/var", "bn1.running_var", keep),
)
BASIC_BLOCK: tuple[Row, ...] = (
    ("layers/{i}/conv1/kernel", "{block}.conv1.weight", conv_kernel),
    ("layers/{i}/norm1/scale", "{block}.bn1.weight", keep),
    ("layers/{i}/norm1/bias", "{block}.bn1.bias", keep),
    ("layers/{i}/norm1/mean", "{block}.bn1.running_mean", keep),
    ("layers/{i}/norm1/var", "{block}.bn1.running_var", keep),
    ("layers/{i}/conv2/kernel", "{block}.conv2.weight", conv_kernel),
    ("layers/{i}/norm2/scale", "{block}.bn2.weight", keep),
    ("layers/{i}/norm2/bias", "{block}.bn2.bias", keep),
    ("layers/{i}/norm2/mean", "{block}.bn2.running_mean", keep),
    ("layers/{i}/norm2/var", "{block}.bn2.running_var", keep),
)
BOTTLENECK: tuple[Row, ...] = BASIC_BLOCK + (
    ("layers/{i}/conv3/kernel", "{block}.conv3.weight", conv_kernel),
    ("layers/{i}/norm3/scale", "{block}.bn3.weight", keep),
    ("layers/{i}/norm3/bias", "{block}.bn3.bias", keep),
    ("layers/{i}/norm3/mean", "{block}.bn3.running_mean", keep),
    ("layers/{i}/norm3/var", "{block}.bn3.running_var", keep),
)
DOWNSAMPLE: tuple[Row, ...] = (
    ("layers/{i}/downsample/conv/kernel", "{block}.downsample.0.weight", conv_kernel),
    ("layers/{i}/downsample/norm/scale", "{block}.downsample.1.weight", keep),
    ("layers/{i}/downsample/norm/bias", "{block}.downsample.1.bias", keep),
    ("layers/{i}/downsample/norm/mean", "{block}.downsample.1.running_mean", keep),
    ("layers/{i}/downsample/norm/var", "{block}.downsample.1.running_var", keep),
)
# Checkpoint tensors that are expected to go unused: the ImageNet classifier, BN's step count.
RESNET_UNUSED = (r"^fc\.", r"\.num_batches_tracked$")


def _fill(rows: Iterable[Row], **names: Any) -> list[Row]:
    return [(ours.format(**names), theirs.format(**names), f) for ours, theirs, f in rows]


def _layer_count(paths: Sequence[str]) -> int:
    found = [int(m.group(1)) for p in paths if (m := re.match(r"layers/(\d+)/", p))]
    return max(found) + 1 if found else 0


def resnet_table(paths: Sequence[str]) -> list[Row]:
    """The rows for a `resnet` trunk with parameter paths `paths` (its block type, depth and
    which blocks have a `downsample` follow from them)."""
    kind = "bottleneck" if "layers/0/conv3/kernel" in paths else "basic"
    count = _layer_count(paths)
    stages = next(
        (blocks for k, blocks in DEPTHS.values() if k == kind and sum(blocks) == count), ()
    )
    rows, i = list(RESNET_STEM), 0
    for stage, blocks in enumerate(stages, start=1):
        for index in range(blocks):
            names = dict(i=i, block=f"layer{stage}.{index}")
            rows += _fill(BASIC_BLOCK if kind == "basic" else BOTTLENECK, **names)
            if f"layers/{i}/downsample/conv/kernel" in paths:
                rows += _fill(DOWNSAMPLE, **names)
            i += 1
    return rows


def _strip_wrapper(name: str) -> str:
    """`module.` of a model saved from inside DataParallel / DistributedDataParallel."""
    return name.removeprefix("module.")


RESNET_LAYOUT = Layout(
    trunk="resnet",
    rows=resnet_table,
    normalize=_strip_wrapper,
    unused=lambda paths: RESNET_UNUSED,
    leftover_hint=(
        "tensors of blocks (layerN.M.) the model lacks mean another depth: leave `depth` out "
        "so that it is read from the tensors (resnet_options). Other tensors can be left out "
        "on purpose with drop=[regex]."
    ),
)


def resnet_options(weights: Mapping[str, Any]) -> dict[str, Any]:
    """`depth`, `width` and `stem` of a torchvision / timm ResNet from its tensors: the block
    type from `layer1.0.conv3`, the depth from the number of blocks per stage, the width from
    the stem's output channels, the stem from its kernel size."""
    names = _names(weights)
    if "conv1.weight" not in names:
        deep = (
            " (deep-stem variants such as resnet50d are not supported)"
            if any(n.startswith("conv1.") for n in names)
            else ""
        )
        raise DataError(
            f"Not a torchvision / timm ResNet state dict: it has no conv1.weight{deep}. "
            f"Its first names: {', '.join(sorted(names)[:6])}."
        )
    kind = "bottleneck" if "layer1.0.conv3.weight" in names else "basic"
    blocks = tuple(
        len({m.group(1) for n in names if (m := re.match(rf"layer{s}\.(\d+)\.", n))})
        for s in range(1, 5)
    )
    depth = next((d for d, layout in DEPTHS.items() if layout == (kind, blocks)), None)
    if depth is None:
        known = ", ".join(f"{d}: {k} {b}" for d, (k, b) in DEPTHS.items())
        raise DataError(
            f"The ResNet state dict has {kind} blocks {blocks} per stage, which is no depth of "
            f"the resnet trunk ({known})."
        )
    stem = np.shape(weights[names["conv1.weight"]])  # [width, channels, k, k]
    if stem[2:] not in ((7, 7), (3, 3)):
        raise DataError(f"conv1.weight has shape {stem}: the resnet stem is 7x7 or 3x3.")
    return {"depth": depth, "width": int(stem[0]), "stem": "imagenet" if stem[2] == 7 else "cifar"}


def resnet_from_weights(
    weights: Mapping[str, Any], *, drop: Iterable[str] = (), **options: Any
) -> ResNet:
    """A `resnet` trunk from checkpoint tensors already read (`read_weights`)."""
    return _resnet(weights, drop, options)


def vit_from_weights(
    weights: Mapping[str, Any], *, drop: Iterable[str] = (), **options: Any
) -> ViT:
    """A `vit` trunk from checkpoint tensors already read; `num_heads` among the options."""
    return _vit(weights, drop, options)


def _resnet(weights: Mapping[str, Any], drop: Iterable[str], options: Mapping[str, Any]) -> ResNet:
    options = _agreed("resnet", resnet_options(weights), options)
    channels = np.shape(weights[_names(weights)["conv1.weight"]])[1]
    # The resnet trunk takes any image size: the shape only gives it its channel count.
    make = lambda: ResNet((224, 224, channels), rngs=nnx.Rngs(0), **options)
    return build_trunk(make, RESNET_LAYOUT, weights, drop=drop)


def load_resnet(
    path: str, *, depth: int | None = None, drop: Iterable[str] = (), **options: Any
) -> ResNet:
    """A `resnet` trunk with the weights of a torchvision / timm ResNet file.

    `depth` and the other architecture options are read from the tensors unless given;
    `options` may also set run options (`dtype="bfloat16"`, `remat=True`).
    """
    if depth is not None:
        options["depth"] = depth
    return _resnet(read_weights(path), drop, options)


def resnet_from_torch(model: Any, *, drop: Iterable[str] = (), **options: Any) -> ResNet:
    """A `resnet` trunk with the weights of a torchvision or timm ResNet model object."""
    return _resnet(state_dict_of_tensors(model.state_dict()), drop, options)


# --- ViT (timm VisionTransformer) -------------------------------------------------------------


def _fused(part: int, name: str, linear: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Rows `part` (0 query, 1 key, 2 value) of a fused qkv tensor [3 * hidden, ...], as an NNX
    kernel [in, out] (`linear`) or a bias."""

    def rows(w: np.ndarray) -> np.ndarray:
        third = w.shape[0] // 3
        chosen = w[part * third : (part + 1) * third]
        return transpose(chosen) if linear else chosen

    rows.__name__ = name
    return rows


query_kernel, key_kernel, value_kernel = (
    _fused(k, f"{n}_kernel", True) for k, n in enumerate(("query", "key", "value"))
)
query_bias, key_bias, value_bias = (
    _fused(k, f"{n}_bias", False) for k, n in enumerate(("query", "key", "value"))
)

VIT_EMBEDDINGS: tuple[Row, ...] = (
    ("embeddings/patch/kernel", "patch_embed.proj.weight", conv_kernel),
    ("embeddings/patch/bias", "patch_embed.proj.bias", keep),
    ("embeddings/cls_token", "cls_token", keep),
    ("embeddings/position", "pos_embed", keep),
)
VIT_LAYER: tuple[Row, ...] = (
    ("layers/{i}/attention/norm/scale", "blocks.{i}.norm1.weight", keep),
    ("layers/{i}/attention/norm/bias", "blocks.{i}.norm1.bias", keep),
    ("layers/{i}/attention/query/kernel", "blocks.{i}.attn.qkv.weight", query_kernel),
    ("layers/{i}/attention/key/kernel", "blocks.{i}.attn.qkv.weight", key_kernel),
    ("layers/{i}/attention/value/kernel", "blocks.{i}.attn.qkv.weight", value_kernel),
    ("layers/{i}/attention/output/kernel", "blocks.{i}.attn.proj.weight", transpose),
    ("layers/{i}/attention/output/bias", "blocks.{i}.attn.proj.bias", keep),
    ("layers/{i}/norm/scale", "blocks.{i}.norm2.weight", keep),
    ("layers/{i}/norm/bias", "blocks.{i}.norm2.bias", keep),
    ("layers/{i}/intermediate/kernel", "blocks.{i}.mlp.fc1.weight", transpose),
    ("layers/{i}/intermediate/bias", "blocks.{i}.mlp.fc1.bias", keep),
    ("layers/{i}/output/kernel", "blocks.{i}.mlp.fc2.weight", transpose),
    ("layers/{i}/output/bias", "blocks.{i}.mlp.fc2.bias", keep),
)
VIT_QKV_BIAS: tuple[Row, ...] = (  # models built with qkv_bias=True (timm's default)
    ("layers/{i}/attention/query/bias", "blocks.{i}.attn.qkv.bias", query_bias),
    ("layers/{i}/attention/key/bias", "blocks.{i}.attn.qkv.bias", key_bias),
    ("layers/{i}/attention/value/bias", "blocks.{i}.attn.qkv.bias", value_bias),
)
VIT_NORM: tuple[Row, ...] = (
    ("norm/scale", "norm.weight", keep),
    ("norm/bias", "norm.bias", keep),
)
VIT_UNUSED = (r"^head\.",)  # the ImageNet classifier


def vit_table(paths: Sequence[str]) -> list[Row]:
    """The rows for a `vit` trunk with parameter paths `paths` (depth and qkv biases follow)."""
    rows = list(VIT_EMBEDDINGS)
    layer = VIT_LAYER + (VIT_QKV_BIAS if "layers/0/attention/query/bias" in paths else ())
    for i in range(_layer_count(paths)):
        rows += _fill(layer, i=i)
    return rows + list(VIT_NORM)


VIT_LAYOUT = Layout(
    trunk="vit",
    rows=vit_table,
    normalize=_strip_wrapper,
    unused=lambda paths: VIT_UNUSED,
    layer_name=r"^blocks\.(\d+)\.",
    layers_field="depth",
    leftover_hint=(
        "leave the architecture options out so that they are read from the tensors "
        "(vit_options); tensors of a task head can be left out on purpose with drop=[regex]."
    ),
)


def vit_options(weights: Mapping[str, Any]) -> dict[str, Any]:
    """`image_size`, `patch_size`, `hidden_size`, `depth`, `mlp_ratio` and `qkv_bias` of a timm
    ViT from its tensors' shapes (`num_heads` is not among them)."""
    names = _names(weights)
    shape = lambda n: tuple(np.shape(weights[names[n]]))
    if "fc_norm.weight" in names:
        raise DataError(
            "The ViT normalises after pooling (timm's fc_norm, global_pool='avg'); the vit trunk "
            "normalises every token and then pools, so these weights do not convert."
        )
    for needed in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.mlp.fc1.weight"):
        if needed not in names:
            raise DataError(
                f"Not a timm VisionTransformer state dict: it has no {needed}. Its first names: "
                f"{', '.join(sorted(names)[:6])}."
            )
    hidden, _, patch, patch_w = shape("patch_embed.proj.weight")
    tokens = shape("pos_embed")[1] - 1  # minus the [CLS] token's
    grid = math.isqrt(max(tokens, 0))
    if patch != patch_w or grid * grid != tokens:
        raise DataError(
            f"The ViT has {patch}x{patch_w} patches and {tokens} patch positions: the vit trunk "
            "takes square patches on a square grid, with one class token and no register tokens."
        )
    mlp_hidden = shape("blocks.0.mlp.fc1.weight")[0]
    mlp_ratio = mlp_hidden / hidden
    if int(hidden * mlp_ratio) != mlp_hidden:  # float rounding: the trunk takes int(h * ratio)
        mlp_ratio = (mlp_hidden + 1e-6) / hidden
    depth = len({m.group(1) for n in names if (m := re.match(r"blocks\.(\d+)\.", n))})
    return {
        "image_size": grid * patch,
        "patch_size": patch,
        "hidden_size": hidden,
        "depth": depth,
        "mlp_ratio": mlp_ratio,
        "qkv_bias": "blocks.0.attn.qkv.bias" in names,
    }


def _vit(weights: Mapping[str, Any], drop: Iterable[str], options: Mapping[str, Any]) -> ViT:
    options = _agreed("vit", vit_options(weights), options)
    channels = np.shape(weights[_names(weights)["patch_embed.proj.weight"]])[1]
    size = options["image_size"]
    make = lambda: ViT((size, size, channels), rngs=nnx.Rngs(0), **options)
    return build_trunk(make, VIT_LAYOUT, weights, drop=drop)


def load_vit(path: str, *, num_heads: int, drop: Iterable[str] = (), **options: Any) -> ViT:
    """A `vit` trunk with the weights of a timm ViT file; `num_heads` must be given (timm's
    names: tiny 3, small 6, base 12, large 16). The other architecture options are read from
    the tensors unless given; `options` may also set `pooling`, `dtype`, `remat`."""
    return _vit(read_weights(path), drop, {"num_heads": num_heads, **options})


def vit_from_torch(model: Any, *, drop: Iterable[str] = (), **options: Any) -> ViT:
    """A `vit` trunk with the weights of a timm `VisionTransformer` object: the number of heads,
    the layer-norm epsilon and the pooling come from the model's attributes."""
    found = {
        "num_heads": model.blocks[0].attn.num_heads,
        "layer_norm_eps": float(getattr(model.norm, "eps", 1e-6)),
        "pooling": "mean" if getattr(model, "global_pool", "token") == "avg" else "cls",
    }
    return _vit(state_dict_of_tensors(model.state_dict()), drop, found | options)


# --- building a trunk from converted weights -------------------------------------------------


def _names(weights: Mapping[str, Any]) -> dict[str, str]:
    """Normalised name -> the checkpoint's name."""
    return {_strip_wrapper(n): n for n in weights}


def _agreed(trunk: str, found: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """`found | options`, or one `ConversionError` naming every architecture option given that
    disagrees with the tensors (before building a model the weights cannot fill)."""
    clashes = [
        f"{k}={options[k]!r} (the tensors say {v!r})"
        for k, v in found.items()
        if k in options and options[k] != v
    ]
    if clashes:
        raise ConversionError(
            f"The checkpoint does not fit the {trunk} options given: {', '.join(clashes)}. Leave "
            f"these options out: {trunk}_options() reads them from the tensors."
        )
    return dict(found) | dict(options)
