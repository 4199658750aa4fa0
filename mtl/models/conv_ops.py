"""Convolutions written as shifted slices and one matmul ("im2col"), for per-task weights.

`jax.vmap` over tasks that each carry their own convolution kernel (the MAML inner loop)
turns `lax.conv_general_dilated` into a grouped convolution, which XLA on CPU runs tens of
times slower than a plain one. Written as `patches @ kernel`, the same vmap gives a batched
matmul, which XLA runs at matmul speed; with a kernel shared by all tasks it is one big matmul.
The kernel layout is Flax's [kh, kw, cin, cout], so parameters are the same in both forms.
The windows are flattened to rows before the matmul for the reason `mtl.models.dense` gives:
the kernel gradient then contracts one dimension, which XLA CPU runs as a plain matmul.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mtl.models.dense import on_rows


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(low, high) padding of XLA's SAME for one spatial axis (as `lax.padtype_to_pads`)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def patches(x: jax.Array, kernel_size: tuple[int, int], stride: int) -> jax.Array:
    """[B, H, W, C] -> [B, Ho, Wo, kh*kw*C]: the SAME-padded windows, tap-major, channel-minor.

    Tap (i, j) of output pixel (y, x) reads input pixel (y*stride + i - pad, x*stride + j - pad),
    so concatenating the kh*kw strided slices in (i, j) order matches `kernel.reshape(-1, cout)`.
    """
    _, h, w, _ = x.shape
    kh, kw = kernel_size
    (top, bottom), (left, right) = same_pads(h, kh, stride), same_pads(w, kw, stride)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho, wo = -(-h // stride), -(-w // stride)
    taps = [
        lax.slice(
            padded,
            (0, i, j, 0),
            (padded.shape[0], i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, x.shape[3]),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(taps, axis=-1)


def conv_matmul(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, stride: int = 1
) -> jax.Array:
    """SAME convolution of `x` [B, H, W, C] with `kernel` [kh, kw, C, O] as one matmul."""
    kh, kw, cin, cout = kernel.shape
    windows = patches(x, (kh, kw), stride)
    out = on_rows(lambda rows: rows @ kernel.reshape(kh * kw * cin, cout), windows)
    return out if bias is None else out + bias
