"""IMTL-G: the update whose projections onto every task's unit gradient are equal."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl.weighting import base, gradients


def imtl_g_weights(k: jax.Array) -> jax.Array:
    """`w = K^+ d / sum(K^+ d)` with `d_t = |g_t|`, zeros when the sum vanishes.

    For linearly independent gradients this is the closed form of Liu et al. (2021): the
    combined gradient `g = G^T w` has `<g, g_t / |g_t|>` equal for every task (`K w` is
    proportional to `d`) and `sum(w) = 1`. The pseudo-inverse is TorchJD's generalisation to
    linearly dependent gradients.
    """
    d = jnp.sqrt(jnp.maximum(jnp.diag(k), 0.0))
    v = jnp.linalg.pinv(k, hermitian=True) @ d
    total = jnp.sum(v)
    return jnp.where(jnp.abs(total) < 1e-12, jnp.zeros_like(v), v / jnp.where(total == 0, 1, total))


def imtl_g(wrt: str = "shared") -> base.Weighting:
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021), the gradient
    half of IMTL, as TorchJD's `IMTLG` (LibMTL's `IMTL` gives the same weights when the
    gradients are linearly independent). The shared gradient is `sum_t w_t g_t` with
    `w = imtl_g_weights(G G^T)`. `wrt="representation"` is the paper's variant on the gradients
    at the shared representation.
    """
    gradients.check_wrt("imtl_g", wrt)

    def solve(k, losses, state, rng):
        return imtl_g_weights(k), state

    return gradients.gradient_method(gradients.no_state, solve, wrt)
