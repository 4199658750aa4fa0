"""LoRA (Hu et al. 2022): low-rank updates to frozen linear layers, and merging them back.

`add_lora(module, targets, rank, alpha, rngs)` swaps every `nnx.Linear` whose path matches the
regex `targets` for a `LoRALinear` with the same `kernel` and `bias` plus factors
`lora_a` [in, rank] and `lora_b` [rank, out]:

    y = x @ kernel + bias + (alpha / rank) * (x @ lora_a) @ lora_b

`lora_b` starts at zero, so the model computes exactly what it did before. Paths of the base
weights do not change (`layers/0/attention/query/kernel`); the factors sit beside them
(`layers/0/attention/query/lora_a`), so converted and trained checkpoints load into a LoRA
model as they are, and freezing rules select the factors by name. The strategy `lora` in
`mtl.transfer.strategies` trains only the factors and the heads.

For inference, `merge(module)` folds the factors into the kernels and gives back plain
`nnx.Linear` layers (no extra matmuls); `merge_params` does the same on a params dict.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

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
    """Replaces the `nnx.Linear` layers whose path matches `targets`; returns their paths."""
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive int, got {rank!r} (finetune.lora.rank).")
    pattern = re.compile(targets)
    chosen = [
        path
        for path, node in nnx.iter_graph(module)
        if isinstance(node, nnx.Linear) and path and pattern.search("/".join(map(str, path)))
    ]
    if not chosen:
        linears = [
            "/".join(map(str, p)) for p, n in nnx.iter_graph(module) if isinstance(n, nnx.Linear)
        ]
        raise ConfigError(
            f"LoRA targets {targets!r} match no linear layer (finetune.lora.targets). Linear "
            f"layers: {', '.join(linears[:8])}{' ...' if len(linears) > 8 else ''}."
        )
    for path in chosen:
        base = _walk(module, path)
        _set(
            _walk(module, path[:-1]), path[-1], LoRALinear(base, rank=rank, alpha=alpha, rngs=rngs)
        )
    return ["/".join(map(str, p)) for p in chosen]


def merge(module: nnx.Module) -> list[str]:
    """Folds every `LoRALinear` in `module` into a plain `nnx.Linear`, in place."""
    chosen = [path for path, node in nnx.iter_graph(module) if isinstance(node, LoRALinear)]
    for path in chosen:
        layer = _walk(module, path)
        in_features, out_features = layer.kernel.shape
        plain = nnx.Linear(
            in_features,
            out_features,
            use_bias=layer.bias is not None,
            dtype=layer.dtype,
            rngs=nnx.Rngs(0),  # overwritten below
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
