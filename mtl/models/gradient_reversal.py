"""The gradient-reversal layer of domain-adversarial training (Ganin & Lempitsky, ICML 2015).

Identity in the forward pass; in the backward pass the cotangent is negated and scaled, so
that whatever lies below learns to defeat the loss above. `GradientReversalHead` reads its
input through it; `mtl.transfer.dann` re-exports it for the training code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def _reverse(x: jax.Array, scale: jax.Array) -> jax.Array:
    return x


def _reverse_fwd(x, scale):
    return x, scale


def _reverse_bwd(scale, g):
    return -scale.astype(g.dtype) * g, jnp.zeros_like(scale)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def gradient_reversal(x: jax.Array, scale: float | jax.Array = 1.0) -> jax.Array:
    """Identity forward (exactly); backward multiplies the cotangent by `-scale`.

    `scale` is an ordinary (possibly traced) argument, so it may change every step (Ganin's
    schedule); it gets no gradient.
    """
    return _reverse(x, jnp.asarray(scale, jnp.float32))
