"""Dynamic weight average (DWA) over windows of steps."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.weighting import base


class DWAState(NamedTuple):
    window_sum: jax.Array  # [T] sum of the losses of the current (incomplete) window
    window_steps: jax.Array  # int32: steps in the current window
    last_mean: jax.Array  # [T] mean losses of the last complete window, L_{k-1}
    before_last_mean: jax.Array  # [T] mean losses of the window before it, L_{k-2}
    windows_done: jax.Array  # int32: complete windows, capped at 2


def dwa(temperature: float = 2.0, window: int = 100) -> base.Weighting:
    """DWA (Liu et al., "End-to-End Multi-Task Learning with Attention", CVPR 2019).

    Weights `T * softmax((L_{k-1} / L_{k-2}) / temperature)` from the mean losses of the last two
    epochs, ones before two epochs are complete (LibMTL's `DWA`). Deviation: we count steps, not
    epochs, so an "epoch" is a window of `window` steps; the state keeps running sums of the
    losses. Set `window` to the steps per epoch to reproduce LibMTL.
    """
    if temperature <= 0:
        raise ConfigError(f"dwa: temperature must be > 0, got {temperature}.")
    if window < 1:
        raise ConfigError(f"dwa: window must be >= 1, got {window}.")

    def init(num_tasks: int) -> DWAState:
        zeros = jnp.zeros((num_tasks,), jnp.float32)
        count = jnp.zeros((), jnp.int32)
        return DWAState(zeros, count, zeros, zeros, count)

    def update(
        objective: base.TaskObjective, state: DWAState, rng: jax.Array
    ) -> tuple[base.Update, DWAState]:
        del rng
        num_tasks = state.window_sum.shape[0]
        ready = state.windows_done >= 2
        # Before two windows are complete the means are zeros: divide by ones to avoid NaNs.
        ratio = state.last_mean / jnp.where(ready, state.before_last_mean, 1.0)
        weights = jnp.where(ready, num_tasks * jax.nn.softmax(ratio / temperature), 1.0)
        update = base.weighted_update(objective, weights)

        window_sum = state.window_sum + update.losses.astype(state.window_sum.dtype)
        window_steps = state.window_steps + 1
        done = window_steps == window
        state = DWAState(
            window_sum=jnp.where(done, 0.0, window_sum),
            window_steps=jnp.where(done, 0, window_steps),
            last_mean=jnp.where(done, window_sum / window, state.last_mean),
            before_last_mean=jnp.where(done, state.last_mean, state.before_last_mean),
            windows_done=jnp.minimum(state.windows_done + done, 2),
        )
        return update, state

    return base.Weighting(init, update)
