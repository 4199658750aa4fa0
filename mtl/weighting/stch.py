"""STCH: smooth Tchebycheff scalarisation of the log losses against a nadir point."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.weighting import base

EPS = 1e-20  # as the official code


class STCHState(NamedTuple):
    step: jax.Array  # int32: updates done
    loss_sum: jax.Array  # [T] sum of the losses over the averaging window
    nadir: jax.Array  # [T] their mean once the window is over (ones before)


def stch_weights(losses: jax.Array, nadir: jax.Array, mu: float) -> jax.Array:
    """d/dL of `T mu log sum_t exp(log(L_t / n_t) / mu)`: `T softmax(l / mu)_t / (L_t + EPS n_t)`
    with `l_t = log(L_t / n_t + EPS)`. As `mu -> 0` all weight goes to the task furthest above
    its nadir value (Tchebycheff); large `mu` gives `1 / L_t` (the sum of log losses)."""
    ratios = jnp.log(losses / nadir + EPS)
    return losses.shape[0] * jax.nn.softmax(ratios / mu) / (losses + EPS * nadir)


def stch(mu: float = 1.0, warmup: int = 400, window: int = 100) -> base.Weighting:
    """STCH (Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization",
    ICML 2024), as its official multi-task code (Xi-L/STCH, `STCH_MTL`, also in LibMTL).

    For the first `warmup + window` steps the model minimises the sum of log losses (weights
    `1 / L_t`); over the last `window` of them the losses are averaged into the nadir point `n`.
    After that the objective is `T mu log sum_t exp(log(L_t / n_t) / mu)` (weights
    `stch_weights`). Deviation: the official code counts epochs (4 warm-up epochs, then one
    epoch of averaging); we count steps, so set `warmup` and `window` to 4 and 1 epochs' steps
    to reproduce it.
    """
    if mu <= 0:
        raise ConfigError(f"stch: mu must be > 0, got {mu} (weighting.stch.mu).")
    if warmup < 0 or window < 1:
        raise ConfigError(
            f"stch: warmup must be >= 0 and window >= 1, got warmup={warmup}, window={window} "
            "(weighting.stch.warmup, weighting.stch.window)."
        )

    def init(num_tasks: int) -> STCHState:
        zeros = jnp.zeros((num_tasks,), jnp.float32)
        return STCHState(jnp.zeros((), jnp.int32), zeros, jnp.ones_like(zeros))

    def update(
        objective: base.TaskObjective, state: STCHState, rng: jax.Array
    ) -> tuple[base.Update, STCHState]:
        del rng
        scalarised = state.step >= warmup + window

        def weights_of(losses):
            losses = losses.astype(jnp.float32)
            log_weights = 1.0 / (losses + EPS)  # d/dL of sum_t log(L_t + EPS)
            return jnp.where(scalarised, stch_weights(losses, state.nadir, mu), log_weights)

        update = base.loss_dependent_update(objective, weights_of)
        losses = update.losses.astype(jnp.float32)
        averaging = (state.step >= warmup) & ~scalarised
        loss_sum = state.loss_sum + jnp.where(averaging, losses, 0.0)
        window_over = state.step + 1 == warmup + window
        nadir = jnp.where(window_over, loss_sum / window, state.nadir)
        return update, STCHState(state.step + 1, loss_sum, nadir)

    return base.Weighting(init, update)
