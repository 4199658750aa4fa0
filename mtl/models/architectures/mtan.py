"""MTAN, the multi-task attention network (Liu et al. 2019): one shared trunk whose every
stage's features `u_j` the tasks read through attention masks of their own. Task t's features
at stage j are `p_j = a_j * u_j` with `a_j = sigmoid(conv1x1(relu(conv1x1([u_j, p_{j-1}]))))`
(`p_{j-1}` resized to stage j's height and width; stage 1 reads `u_1` alone); its tower reads
`p_n` averaged over space. The paper's attention blocks also have batch norm and a shared 3x3
convolution between stages; here the masks are two 1x1 convolutions, so a task's part has no
statistics to keep. The trunk must expose its stages (`stages.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mtl.errors import ConfigError
from mtl.models.architectures import ARCHITECTURES
from mtl.models.architectures.stages import StageFeatures, require_stages, stage_shapes
from mtl.models.heads import DenseHead


class AttentionMask(nnx.Module):
    """1x1 conv -> ReLU -> 1x1 conv -> sigmoid, to `channels` channels."""

    def __init__(self, in_channels: int, channels: int, *, rngs: nnx.Rngs):
        self.inner = nnx.Conv(in_channels, channels, (1, 1), rngs=rngs)
        self.outer = nnx.Conv(channels, channels, (1, 1), rngs=rngs)

    def __call__(self, h: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(self.outer(nnx.relu(self.inner(h))))


class MTANHead(nnx.Module):
    """A task's attention mask per stage and its tower."""

    def __init__(self, channels: Sequence[int], tower: DenseHead, *, rngs: nnx.Rngs):
        # Stage 1 reads its own features; every later stage also the previous stage's.
        ins = [channels[0], *(c + p for c, p in zip(channels[1:], channels[:-1], strict=True))]
        self.masks = nnx.List(
            [AttentionMask(i, c, rngs=rngs) for i, c in zip(ins, channels, strict=True)]
        )
        self.tower = tower

    def __call__(self, z: Sequence[jax.Array], *, inputs: Any = None, train: bool = False):
        p = None
        for mask, u in zip(self.masks, z, strict=True):
            u = u.astype(jnp.float32)
            if p is None:
                read = u
            else:
                resized = jax.image.resize(p, (*u.shape[:3], p.shape[-1]), "linear")
                read = jnp.concatenate([u, resized], axis=-1)
            p = mask(read) * u
        return self.tower(jnp.mean(p, axis=(1, 2)))


@ARCHITECTURES.register("mtan")
def mtan(make_trunk, tasks, input_shape, *, rngs):
    """One trunk, per task an attention mask at every stage and a tower."""
    trunk = make_trunk()
    require_stages(trunk, "mtan")
    shapes = stage_shapes(trunk, input_shape)
    if any(len(s) != 3 for s in shapes):
        raise ConfigError(
            f"model.architecture=mtan needs feature maps [height, width, channels] at every "
            f"stage; the trunk's stages give {shapes}."
        )
    channels = [s[-1] for s in shapes]
    heads = {
        t.name: MTANHead(
            channels,
            DenseHead(channels[-1], t.num_outputs, hidden=t.head_hidden, rngs=rngs),
            rngs=rngs,
        )
        for t in tasks
    }
    return StageFeatures(trunk), heads
