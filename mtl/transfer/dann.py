"""Domain-adversarial training (Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation", ICML 2015; Ganin et al., JMLR 2016).

A domain classifier reads the shared representation through a gradient-reversal layer: the
classifier learns to tell source from target, while the trunk receives the reversed (negated,
scaled) gradient and so learns features the classifier cannot separate. The label loss uses
the labelled source examples only. The layer itself lives with the models
(`mtl.models.gradient_reversal`), as the domain-classifier head uses it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mtl.models.gradient_reversal import gradient_reversal

__all__ = ["domain_loss", "ganin_lambda", "gradient_reversal"]


def ganin_lambda(progress: jax.Array, gamma: float = 10.0) -> jax.Array:
    """`2 / (1 + exp(-gamma p)) - 1`: from 0 at the start to about 1 at the end (p in [0, 1])."""
    return 2.0 / (1.0 + jnp.exp(-gamma * progress)) - 1.0


def domain_loss(domain_logits: jax.Array, is_target: jax.Array) -> jax.Array:
    """Binary cross-entropy of the domain classifier (one logit per example), a mean."""
    return jnp.mean(
        optax.sigmoid_binary_cross_entropy(domain_logits[:, 0], is_target.astype(jnp.float32))
    )
