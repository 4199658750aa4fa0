"""GradNorm: loss weights that balance the per-task gradient norms."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl.errors import ConfigError
from mtl.weighting import base, gradients

WRT = ("shared", "representation")


class GradNormState(NamedTuple):
    logits: jax.Array  # [T]; the weights are T * softmax(logits)
    opt_state: optax.OptState
    initial_losses: jax.Array  # [T] L_t(0), the losses of the first step
    step: jax.Array  # int32: steps taken


def gradnorm(alpha: float = 1.5, lr: float = 0.025, wrt: str = "shared") -> base.Weighting:
    """GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
    Deep Multitask Networks", ICML 2018), in LibMTL's form.

    Weights `w = T * softmax(logits)`, logits starting at ones. With `G_t = ||grad w_t L_t||`
    and `r_t = (L_t / L_t(0)) / mean(L / L(0))`, the logits take one Adam(`lr`) step on
    `L_grad = sum_t |G_t - mean(G) * r_t^alpha|`, the target held constant. The model gradient is
    that of `sum_t w_t L_t` with the weights before that step.

    `wrt="shared"` takes the norms over all shared parameters (one vmap-ed backward pass per
    task); `wrt="representation"` over the gradient at the shared representation summed over the
    batch, as LibMTL's `rep_grad` (cheap: the per-task passes stop at the heads).

    Deviations from LibMTL: `L_t(0)` is the loss of the first step, not the mean over the first
    epoch, and the weights adapt from that first step on (LibMTL uses EW during epoch 0); the
    logits have their own Adam; the heads get the weighted gradient too (LibMTL gives them the
    unweighted one, a side effect of its per-task backward passes; the paper weights all of
    `sum_t w_t L_t`). The softmax keeps `sum(w) = T` without the paper's renormalisation step.
    """
    if wrt not in WRT:
        raise ConfigError(f"gradnorm: wrt must be one of {WRT}, got {wrt!r}.")
    if lr <= 0:
        raise ConfigError(f"gradnorm: lr must be > 0, got {lr}.")
    opt = optax.adam(lr)

    def init(num_tasks: int) -> GradNormState:
        logits = jnp.ones((num_tasks,), jnp.float32)
        zeros = jnp.zeros_like(logits)
        return GradNormState(logits, opt.init(logits), zeros, jnp.zeros((), jnp.int32))

    def update(
        objective: base.TaskObjective, state: GradNormState, rng: jax.Array
    ) -> tuple[base.Update, GradNormState]:
        del rng
        weights = state.logits.shape[0] * jax.nn.softmax(state.logits)
        update, norms = _weighted_update_and_norms(objective, weights, wrt)
        return update, _logits_step(state, update.losses, norms, alpha, opt)

    return base.Weighting(init, update)


def _weighted_update_and_norms(
    objective: base.TaskObjective, weights: jax.Array, wrt: str
) -> tuple[base.Update, jax.Array]:
    """The update of `sum_t w_t L_t` and the per-task gradient norms `||grad L_t||` ([T]),
    taken as `wrt` says; the norms carry no gradient."""
    # Under jit XLA shares one forward pass between the helpers below and drops the parts
    # of their backward passes that go unused (checked with `cost_analysis`: wrt="shared"
    # costs what `per_task_shared_grads` alone costs).
    if wrt == "shared":
        shared_grads, _, _ = base.per_task_shared_grads(objective)
        norms = jnp.sqrt(gradients.task_squared_norms(shared_grads))
        update = base.weighted_update(objective, weights)
        # sum_t w_t g_t from the per-task gradients at hand: no second trunk backward pass.
        combined = jax.tree.map(
            lambda g: jnp.tensordot(weights, g, axes=1).astype(g.dtype), shared_grads
        )
        update = update._replace(shared_grads=combined)
    else:
        z_grads, _ = base.representation_grads(objective)
        # As LibMTL's rep_grad mode: sum the gradient over the batch axis of z first (z may be
        # a tuple of arrays, e.g. the experts' outputs under MMoE).
        per_task = jax.tree.map(lambda g: jnp.sum(g, axis=1), z_grads)
        norms = jnp.sqrt(gradients.task_squared_norms(per_task))
        update = base.weighted_update(objective, weights)
    return update, jax.lax.stop_gradient(norms)


def _grad_loss(logits: jax.Array, norms: jax.Array, relative: jax.Array, alpha: float) -> jax.Array:
    """`L_grad = sum_t |G_t - mean(G) * r_t^alpha|`, the target held constant."""
    # G_t = ||grad (w_t L_t)|| = w_t ||grad L_t|| since w_t > 0.
    g = logits.shape[0] * jax.nn.softmax(logits) * norms
    target = jax.lax.stop_gradient(jnp.mean(g) * relative**alpha)
    return jnp.sum(jnp.abs(g - target))


def _logits_step(
    state: GradNormState,
    losses: jax.Array,
    norms: jax.Array,
    alpha: float,
    opt: optax.GradientTransformation,
) -> GradNormState:
    """The state after one `opt` step of the logits on `L_grad`; the first step's `losses`
    become `L(0)`."""
    losses = jax.lax.stop_gradient(losses).astype(jnp.float32)
    initial_losses = jnp.where(state.step == 0, losses, state.initial_losses)
    ratios = losses / initial_losses
    relative = ratios / jnp.mean(ratios)
    logit_grads = jax.grad(_grad_loss)(state.logits, norms, relative, alpha)
    steps, opt_state = opt.update(logit_grads, state.opt_state, state.logits)
    return GradNormState(
        optax.apply_updates(state.logits, steps), opt_state, initial_losses, state.step + 1
    )
