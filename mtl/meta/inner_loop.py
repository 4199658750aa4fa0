"""The inner loop every gradient-based meta-learner here shares.

`inner_loop` runs `steps` steps of gradient descent on a task's support loss, starting from
the meta-learned `fast` weights:

    fast_{i+1} = fast_i - lr_i * grad loss(fast_i, i)

It is differentiable end to end, so `jax.grad` of a loss of its result is the MAML
meta-gradient (second order); `first_order=True` stops the gradient through the inner
gradients (first-order MAML, Reptile). What each method adapts and with which rates is the
caller's choice: ANIL passes only the head as `fast`, Meta-SGD passes learned per-parameter
rates, MAML++ learned per-step per-layer rates and per-step batch norm (through `step`).

Step 0 runs outside the `lax.scan` over the remaining steps. Under `jax.vmap` over tasks the
initial weights are shared by all tasks, and outside the scan they stay unbatched, so the first
forward pass of all tasks is one big matmul or convolution instead of a batched one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[[PyTree, jax.Array], tuple[jax.Array, PyTree]]  # (fast, step) -> (loss, aux)


def rate_at(lrs: PyTree, step: jax.Array | int) -> PyTree:
    """Entry `step` of each per-step rate leaf [S, ...], clamped to the last entry."""
    return jax.tree_util.tree_map(lambda r: r[jnp.minimum(step, r.shape[0] - 1)], lrs)


def sgd_step(
    loss_fn: LossFn, fast: PyTree, lrs: PyTree, step: jax.Array | int, first_order: bool
) -> tuple[PyTree, jax.Array, PyTree]:
    """One inner step: `(new_fast, loss, aux)`."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(fast, step)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    rates = rate_at(lrs, step)
    new = jax.tree_util.tree_map(lambda p, g, r: p - r * g, fast, grads, rates)
    return new, loss, aux


def inner_loop(
    loss_fn: LossFn,
    fast: PyTree,
    lrs: PyTree,
    *,
    steps: int,
    first_order: bool = False,
    remat: bool = False,
    observe: Callable[[PyTree, jax.Array], PyTree] | None = None,
) -> tuple[PyTree, dict[str, Any]]:
    """Adapts `fast` by `steps` gradient steps on `loss_fn`; see the module docstring.

    Args:
      loss_fn: `(fast, step) -> (loss, aux)`, the support loss of the weights after `step`
        inner steps (step is an int32 scalar, for per-step batch norm).
      fast: the weights to adapt (a pytree of arrays).
      lrs: rates shaped like `fast`, each leaf [S, ...] broadcastable against the weight;
        step i uses entry min(i, S - 1) (per-step rates; a fixed rate is a leaf of shape [1]).
      steps: number of inner steps (>= 1).
      first_order: treat the inner gradients as constants in the meta-gradient.
      remat: recompute each step's activations in the backward pass instead of storing them
        (`jax.checkpoint`): memory of one step instead of `steps`, for about one more forward.
      observe: `(fast, step) -> pytree`, evaluated on the weights after each step (step = 1
        .. steps): query losses for MAML++'s multi-step loss, or an adaptation curve.

    Returns:
      `(adapted, trace)`: the weights after `steps` steps and a dict of per-step values
      stacked on a leading [steps] axis: `loss` (support loss before each step), `aux`
      (loss_fn's aux) and, with `observe`, `observed`.
    """
    if steps < 1:
        raise ValueError(f"inner_loop needs steps >= 1, got {steps}.")

    def one_step(fast, step):
        new, loss, aux = sgd_step(loss_fn, fast, lrs, step, first_order)
        out = {"loss": loss, "aux": aux}
        if observe is not None:
            out["observed"] = observe(new, step + 1)
        return new, out

    if remat:
        one_step = jax.checkpoint(one_step)

    fast, first = one_step(fast, jnp.int32(0))
    if steps == 1:
        return fast, jax.tree_util.tree_map(lambda a: a[None], first)
    fast, rest = jax.lax.scan(one_step, fast, jnp.arange(1, steps, dtype=jnp.int32))
    trace = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    return fast, trace
