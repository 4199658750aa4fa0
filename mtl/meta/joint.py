"""The MAML paper's baseline: one model pretrained on all tasks jointly, then fine-tuned.

The network is trained by plain regression on points pooled from many training tasks (for
sinusoids it learns roughly their mean, zero), then adapted to a new task with the same inner
loop as MAML: `steps` gradient steps at rate `finetune_lr` on the K support points. Only
regression families make sense here: a classification episode's labels are permuted per
episode, so pooling them teaches nothing. The run that trains it is `mtl.runs.joint_baseline`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mtl.meta import model as mm

PyTree = Any


def pooled_loss(
    model: mm.MetaModel, params: PyTree, state: PyTree, episodes: Mapping[str, Any]
) -> jax.Array:
    """The mean loss over every support and query point of a meta-batch, pooled."""
    x = jnp.concatenate([episodes["support"]["x"], episodes["query"]["x"]], axis=1)
    y = jnp.concatenate([episodes["support"]["y"], episodes["query"]["y"]], axis=1)
    x, y = x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:])
    z, _ = model.embed(params, state, x, train=True)
    return model.loss(model.outputs(params["head"], z), y)
