"""A small single-model loop for the transfer experiments (EWC, progressive nets, DANN,
distillation): `fit` runs Adam on any `loss_fn(params, model_state, batch, step)` with batches
drawn by the engine's stateless sampler, and `accuracy` evaluates any logits function.

These runs train one model on one data set at a time and differ only in their loss, so a loss
function is the whole difference between them (see `scripts/transfer_results.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl.data import arrays

PyTree = Any
# (params, model_state, batch, step) -> (loss, new_model_state)
LossFn = Callable[[PyTree, PyTree, PyTree, jax.Array], tuple[jax.Array, PyTree]]


def fit(
    loss_fn: LossFn,
    params: PyTree,
    model_state: PyTree,
    data: arrays.ArrayDataset,
    *,
    num_steps: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> tuple[PyTree, PyTree, list[float]]:
    """Adam on `loss_fn` for `num_steps` batches of `data`; returns params, state, losses."""
    opt = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state, model_state, batch, i):
        (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, batch, i
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, model_state, loss

    opt_state = opt.init(params)
    n = arrays.num_examples(data)
    losses = []
    for i in range(num_steps):
        batch = arrays.take(data, arrays.batch_indices(seed, i, n, batch_size))
        params, opt_state, model_state, loss = step(
            params, opt_state, model_state, batch, jnp.int32(i)
        )
        losses.append(loss)
    return params, model_state, [float(v) for v in jax.device_get(losses)]


def accuracy(
    logits_fn: Callable[[jax.Array], jax.Array],
    inputs: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 512,
) -> float:
    """Top-1 accuracy of `logits_fn` over all of `inputs`."""
    logits_fn = jax.jit(logits_fn)
    correct = 0
    for start in range(0, len(inputs), batch_size):
        logits = logits_fn(jnp.asarray(inputs[start : start + batch_size]))
        correct += int(jnp.sum(jnp.argmax(logits, -1) == labels[start : start + batch_size]))
    return correct / max(len(inputs), 1)
