"""FAMO: fast adaptive multitask optimisation."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl.errors import ConfigError
from mtl.weighting import base

EPS = 1e-8  # as the official code


class FAMOState(NamedTuple):
    logits: jax.Array  # w, [T]; the task distribution is softmax(w)
    opt_state: optax.OptState
    prev_losses: jax.Array  # [T] the losses of the last `update`, before the model moved


def famo(lr: float = 0.025, gamma: float = 0.01, min_loss: float = 0.0) -> base.Weighting:
    """FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023), following
    the official code (github.com/Cranial-XIX/FAMO, `famo.py`, class `FAMO`).

    With `z = softmax(w)`, `D_t = L_t - min_loss + 1e-8` and `c = sum_t z_t / D_t` held constant,
    the model gradient is that of `sum_t log(D_t) z_t / c`, i.e. weights `z_t / (c D_t)` (they sum
    to one). `after_update(state, losses_after)` takes the losses of the same batch at the updated
    parameters: `delta = log D(before) - log D(after)` is pulled back through the softmax and `w`
    takes an Adam(`lr`) step with L2 weight decay `gamma` added to the gradient (as
    `torch.optim.Adam(weight_decay=gamma)`). Without that call the weights never change.

    Deviations from the official code: `min_loss` is one number for all tasks; the official
    `backward` also clips the shared gradient to norm 1 (`max_norm`): that belongs to the model
    optimizer here (`optax.clip_by_global_norm`), so this method does not clip.
    """
    if lr <= 0:
        raise ConfigError(f"famo: lr must be > 0, got {lr}.")
    if gamma < 0:
        raise ConfigError(f"famo: gamma must be >= 0, got {gamma}.")
    opt = optax.chain(optax.add_decayed_weights(gamma), optax.adam(lr))

    def init(num_tasks: int) -> FAMOState:
        logits = jnp.zeros((num_tasks,), jnp.float32)
        return FAMOState(logits, opt.init(logits), jnp.zeros_like(logits))

    def update(
        objective: base.TaskObjective, state: FAMOState, rng: jax.Array
    ) -> tuple[base.Update, FAMOState]:
        del rng
        # The weights depend on this step's losses: one forward pass, then one backward pass
        # with the weights as the cotangent of the losses.
        z = jax.nn.softmax(state.logits)

        def weights_of(losses):
            d = losses.astype(jnp.float32) - min_loss + EPS
            return z / (jnp.sum(z / d) * d)  # d/dL of sum(log(D) * z / c), c = sum(z / D)

        update = base.loss_dependent_update(objective, weights_of)
        prev_losses = jax.lax.stop_gradient(update.losses).astype(jnp.float32)
        return update, state._replace(prev_losses=prev_losses)

    def after_update(state: FAMOState, losses_after: jax.Array) -> FAMOState:
        losses_after = jax.lax.stop_gradient(losses_after).astype(jnp.float32)
        delta = jnp.log(state.prev_losses - min_loss + EPS) - jnp.log(losses_after - min_loss + EPS)
        _, softmax_vjp = jax.vjp(jax.nn.softmax, state.logits)
        (logit_grads,) = softmax_vjp(delta)
        steps, opt_state = opt.update(logit_grads, state.opt_state, state.logits)
        return FAMOState(optax.apply_updates(state.logits, steps), opt_state, state.prev_losses)

    return base.Weighting(init, update, after_update)
