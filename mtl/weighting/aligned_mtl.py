"""Aligned-MTL: align the principal components of the task gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl.weighting import base, gradients


def aligned_weights(k: jax.Array) -> jax.Array:
    """Weights `B^T 1` with `B = sqrt(lambda_min) V Lambda^{-1/2} V^T` from `K = V Lambda V^T`.

    The rows of `B G` are orthogonal with equal norms `sqrt(lambda_min)`: the gradient system
    with condition number one closest to `G` (Senushkin et al. 2023, Theorem 3.2). Eigenvalues
    at or below the numerical tolerance (the rank deficiency of `G`) are dropped, as LibMTL
    does; `lambda_min` is the smallest eigenvalue kept.
    """
    lam, v = jnp.linalg.eigh(k)  # ascending
    tol = jnp.max(lam) * k.shape[0] * jnp.finfo(k.dtype).eps
    keep = lam > tol
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    sigma_min = jnp.sqrt(jnp.min(jnp.where(keep, lam, jnp.inf)))
    b = sigma_min * (v * inv_sqrt) @ v.T
    return jnp.sum(b, axis=0)


def aligned_mtl(wrt: str = "shared") -> base.Weighting:
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023), as LibMTL's `Aligned_MTL` with equal task importances: the shared
    gradient is `sum_t w_t g_t` with `w = aligned_weights(G G^T)`. `wrt="representation"` is the
    paper's Aligned-MTL-UB.
    """
    gradients.check_wrt("aligned_mtl", wrt)

    def solve(k, losses, state, rng):
        return aligned_weights(k), state

    return gradients.gradient_method(gradients.no_state, solve, wrt)
