"""LoRA (Hu et al. 2022): low-rank updates to frozen linear layers and convolutions, and
merging them back.

`add_lora(module, targets, rank, alpha, rngs)` swaps every `nnx.Linear` whose path matches the
regex `targets` for a `LoRALinear` with the same `kernel` and `bias` plus factors
`lora_a` [in, rank] and `lora_b` [rank, out]:

    y = x @ kernel + bias + (alpha / rank) * (x @ lora_a) @ lora_b

`lora_b` starts at zero, so the model computes exactly what it did before. Paths of the base
weights do not change (`layers/0/attention/query/kernel`); the factors sit beside them
(`layers/0/attention/query/lora_a`), so converted and trained checkpoints load into a LoRA
model as they are, and freezing rules select the factors by name. The strategy `lora` in
`mtl.transfer.strategies` trains only the factors and the heads.

A 2-D `nnx.Conv` whose path matches becomes a `LoRAConv`: the same kxk convolution (stride,
padding, dilation) to `rank` channels with `lora_a` [kh, kw, in, rank], then `lora_b`
[rank, out] mixes them into the outputs (a 1x1 convolution). `lora_a @ lora_b` has the kernel's
shape, so merging is the same sum for both. The default targets name no convolution (the
ResNet trunks' are `conv1`, `conv2`, ...: say `targets=r"conv\\d?$"`).

For inference, `merge(module)` folds the factors into the kernels and gives back plain
`nnx.Linear` / `nnx.Conv` layers (no extra work); `merge_params` does the same on a params dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding
from jax import lax

from mtl.errors import ConfigError

DEFAULT_TARGETS = r"(query|key|value|output|intermediate)$"


class LoRALinear(nnx.Module):
    """A linear layer plus a scaled low-rank update."""

    def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, rngs: nnx.Rngs):
        in_features, out_features = base.kernel.shape
        self.kernel = base.kernel  # the same Variables: paths and values are kept
        self.bias = base.bias
        self.dtype = base.dtype
        init_a = nnx.initializers.he_uniform()
        self.lora_a = nnx.LoRAParam(init_a(rngs.params(), (in_features, rank), jnp.float32))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank, out_features), jnp.float32))
        self.scale = alpha / rank

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        y = x @ self.kernel[...].astype(dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        low_rank = (x @ self.lora_a[...].astype(dtype)) @ self.lora_b[...].astype(dtype)
        return y + self.scale * low_rank


class LoRAConv(nnx.Module):
    """A 2-D convolution plus a scaled low-rank update (see the module docstring)."""

    def __init__(self, base: nnx.Conv, *, rank: int, alpha: float, rngs: nnx.Rngs):
        *window, in_features, out_features = base.kernel.shape
        if len(window) != 2 or base.feature_group_count != 1 or base.mask is not None:
            raise ConfigError(
                "LoRA takes 2-D convolutions without feature groups or masks; "
                "finetune.lora.targets chose another."
            )
        self.kernel = base.kernel  # the same Variables: paths and values are kept
        self.bias = base.bias
        self.dtype = base.dtype
        # What `lax.conv_general_dilated` needs, and `merge` to build the plain layer again.
        self.strides = _pair(base.strides)
        self.padding = canonicalize_padding(base.padding, 2)
        self.input_dilation = _pair(base.input_dilation)
        self.kernel_dilation = _pair(base.kernel_dilation)
        if isinstance(self.padding, str) and self.padding not in ("SAME", "VALID"):
            raise ConfigError(f"LoRA does not take convolutions with {self.padding} padding.")
        init_a = nnx.initializers.he_uniform()
        shape_a = (*window, in_features, rank)
        self.lora_a = nnx.LoRAParam(init_a(rngs.params(), shape_a, jnp.float32))
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank, out_features), jnp.float32))
        self.scale = alpha / rank

    def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            x,
            kernel,
            window_strides=self.strides,
            padding=self.padding,
            lhs_dilation=self.input_dilation,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        y = self._conv(x, self.kernel[...].astype(dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        low_rank = self._conv(x, self.lora_a[...].astype(dtype)) @ self.lora_b[...].astype(dtype)
        return y + self.scale * low_rank


def _pair(value: Any) -> tuple[int, int]:
    """An `nnx.Conv` stride or dilation (None, an int or a pair) as a pair."""
    if value is None:
        return (1, 1)
    return (value, value) if isinstance(value, int) else tuple(value)


def _walk(module: nnx.Module, path: tuple) -> Any:
    node = module
    for key in path:
        node = (
            node[key] if isinstance(key, int) or isinstance(node, Mapping) else getattr(node, key)
        )
    return node


def _set(parent: Any, key: Any, value: Any) -> None:
    if isinstance(key, int) or isinstance(parent, Mapping):
        parent[key] = value
    else:
        setattr(parent, key, value)


def add_lora(
    module: nnx.Module,
    *,
    rank: int,
    alpha: float,
    targets: str = DEFAULT_TARGETS,
    rngs: nnx.Rngs,
) -> list[str]:
    """Replaces the `nnx.Linear` and `nnx.Conv` layers whose path matches `targets`; returns
    their paths."""
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive int, got {rank!r} (finetune.lora.rank).")
    pattern = re.compile(targets)
    layers = [
        (path, node)
        for path, node in nnx.iter_graph(module)
        if isinstance(node, nnx.Linear | nnx.Conv) and path
    ]
    chosen = [(p, n) for p, n in layers if pattern.search("/".join(map(str, p)))]
    if not chosen:
        names = ["/".join(map(str, p)) for p, _ in layers]
        raise ConfigError(
            f"LoRA targets {targets!r} match no linear layer or convolution "
            f"(finetune.lora.targets). Linear layers and convolutions: "
            f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}."
        )
    for path, base in chosen:
        wrapper = LoRALinear if isinstance(base, nnx.Linear) else LoRAConv
        _set(_walk(module, path[:-1]), path[-1], wrapper(base, rank=rank, alpha=alpha, rngs=rngs))
    return ["/".join(map(str, p)) for p, _ in chosen]


def merge(module: nnx.Module) -> list[str]:
    """Folds every `LoRALinear` / `LoRAConv` in `module` into a plain `nnx.Linear` /
    `nnx.Conv`, in place."""
    chosen = [
        path for path, node in nnx.iter_graph(module) if isinstance(node, LoRALinear | LoRAConv)
    ]
    for path in chosen:
        layer = _walk(module, path)
        *window, in_features, out_features = layer.kernel.shape
        # The kernel is overwritten below: zeros, not a random one that costs compiling.
        options = dict(
            use_bias=layer.bias is not None,
            dtype=layer.dtype,
            kernel_init=nnx.initializers.zeros_init(),
            rngs=nnx.Rngs(0),
        )
        if isinstance(layer, LoRALinear):
            plain = nnx.Linear(in_features, out_features, **options)
        else:
            plain = nnx.Conv(
                in_features,
                out_features,
                tuple(window),
                strides=layer.strides,
                padding=layer.padding,
                input_dilation=layer.input_dilation,
                kernel_dilation=layer.kernel_dilation,
                **options,
            )
        plain.kernel[...] = _merged_kernel(
            layer.kernel[...], layer.lora_a[...], layer.lora_b[...], layer.scale
        )
        if layer.bias is not None:
            plain.bias[...] = layer.bias[...]
        _set(_walk(module, path[:-1]), path[-1], plain)
    return ["/".join(map(str, p)) for p in chosen]


def _merged_kernel(kernel, lora_a, lora_b, scale):
    return (kernel + scale * (lora_a @ lora_b)).astype(kernel.dtype)


def merge_params(params: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """A params dict with `kernel + scale * lora_a @ lora_b` and no factors (pure function)."""
    if not isinstance(params, Mapping):
        return params
    if {"kernel", "lora_a", "lora_b"} <= set(params):
        out = {k: v for k, v in params.items() if k not in ("lora_a", "lora_b")}
        out["kernel"] = _merged_kernel(params["kernel"], params["lora_a"], params["lora_b"], scale)
        return out
    return {k: merge_params(v, scale) for k, v in params.items()}
