"""Random loss weighting (RLW)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtl.weighting import base


def rlw() -> base.Weighting:
    """RLW (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning", TMLR 2022; arXiv:2111.10603, 2021).

    Each step draws `weights = softmax(normal(rng, [T]))` and backpropagates `sum_t w_t loss_t`,
    as LibMTL's `RLW` with its default `dist='Normal'`. The weights sum to one, so the loss scale is
    1/T of EW's. The draw depends only on `rng`: the train step must pass a fresh key each step.
    """

    def init(num_tasks: int) -> optax.EmptyState:
        del num_tasks
        return optax.EmptyState()

    def update(
        objective: base.TaskObjective, state: optax.EmptyState, rng: jax.Array
    ) -> tuple[base.Update, optax.EmptyState]:
        # The weights are needed before the backward pass, so the number of tasks comes from the
        # shapes of a traced (not executed) forward pass.
        losses = jax.eval_shape(lambda: base.forward(objective)[0])
        weights = jax.nn.softmax(jax.random.normal(rng, losses.shape, jnp.float32))
        return base.weighted_update(objective, weights), state

    return base.Weighting(init, update)
