"""PCGrad: project each task's gradient off the gradients it conflicts with."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl.weighting import base, gradients

EPS = 1e-8  # as LibMTL and the official code


def pcgrad_coefficients(k: jax.Array, orders: jax.Array) -> jax.Array:
    """PCGrad in the basis of the original gradients: `C` [T, T] with `g_i^PC = sum_j C_ij g_j`.

    For each task i, in the order `orders[i]` (a permutation of all tasks, i included, as in
    the official code): if `<g_i^PC, g_j> < 0`, subtract `<g_i^PC, g_j> / |g_j|^2 g_j`. With
    `g_i^PC = C_i G`, `<g_i^PC, g_j> = (C_i K)_j`, so only the Gram matrix `K` is needed.
    """
    num = k.shape[0]

    def one_task(row, order):
        def step(c, j):
            dot = c @ k[:, j]
            coef = jnp.where(dot < 0, dot / (k[j, j] + EPS), 0.0)
            return c - coef * jax.nn.one_hot(j, num, dtype=c.dtype), None

        c, _ = jax.lax.scan(step, row, order)
        return c

    return jax.vmap(one_task)(jnp.eye(num, dtype=k.dtype), orders)


def pcgrad(wrt: str = "shared", shuffle: bool = True) -> base.Weighting:
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020), as LibMTL's
    `PCGrad` and the official code: every task's gradient is projected onto the normal plane of
    each gradient it conflicts with (negative inner product), visiting the others in a random
    order per task (`shuffle`); the shared gradient is the sum of the projected gradients.

    The result is `sum_t w_t g_t` with `w` the column sums of `pcgrad_coefficients`; `w` is what
    `Update.weights` reports (LibMTL's `batch_weight`). `wrt="representation"` applies the
    surgery to the gradients at the shared representation and backpropagates the result
    through the trunk once (a cheap variant; LibMTL refuses PCGrad with `rep_grad`).
    """
    gradients.check_wrt("pcgrad", wrt)

    def solve(k, losses, state, rng):
        num = k.shape[0]
        if shuffle:
            orders = jax.vmap(lambda r: jax.random.permutation(r, num))(jax.random.split(rng, num))
        else:
            orders = jnp.tile(jnp.arange(num), (num, 1))
        return jnp.sum(pcgrad_coefficients(k, orders), axis=0), state

    return gradients.gradient_method(gradients.no_state, solve, wrt)
