"""The MAML paper's baseline: one model pretrained on all tasks jointly, then fine-tuned.

The network is trained by plain regression on points pooled from many training tasks (for
sinusoids it learns roughly their mean, zero), then adapted to a new task with the same inner
loop as MAML: `steps` gradient steps at rate `finetune_lr` on the K support points. Only
regression families make sense here: a classification episode's labels are permuted per
episode, so pooling them teaches nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl.meta import model as mm

PyTree = Any


def train_joint(
    model: mm.MetaModel,
    params: PyTree,
    state: PyTree,
    sample: Callable[[int], Mapping],
    *,
    steps: int,
    learning_rate: float,
) -> PyTree:
    """Adam on the mean loss over all points of meta-batch `sample(i)`, for `steps` steps."""
    tx = optax.adam(learning_rate)

    def loss_fn(params, batch):
        x = jnp.concatenate([batch["support"]["x"], batch["query"]["x"]], axis=1)
        y = jnp.concatenate([batch["support"]["y"], batch["query"]["y"]], axis=1)
        x, y = x.reshape(-1, *x.shape[2:]), y.reshape(-1, *y.shape[2:])
        z, _ = model.embed(params, state, x, train=True)
        return model.loss(model.outputs(params["head"], z), y)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    for i in range(steps):
        batch = jax.tree_util.tree_map(np.asarray, sample(i))
        params, opt_state, _ = step(params, opt_state, batch)
    return params
