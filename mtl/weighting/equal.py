"""Equal weighting (EW): the plain sum of the task losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtl.weighting import base


def equal() -> base.Weighting:
    """EW: one backward pass through `sum_t loss_t`.

    The baseline of every multi-task paper. Like LibMTL's `EW`, this sums (it does not average)
    the losses, so its learning rates are comparable with LibMTL's.
    """

    def init(num_tasks: int) -> optax.EmptyState:
        del num_tasks
        return optax.EmptyState()

    def update(
        objective: base.TaskObjective, state: optax.EmptyState, rng: jax.Array
    ) -> tuple[base.Update, optax.EmptyState]:
        del rng
        update = base.weighted_update(objective, jnp.ones(()))
        return update._replace(weights=jnp.ones_like(update.losses)), state

    return base.Weighting(init, update)
