"""The causal language-modelling loss: predict each token from the ones before it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_lm_loss(logits: jax.Array, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the real target tokens, in float32.

    Position t's logits [batch, length, vocab] predict token t + 1. A target counts when it
    and the token predicting it are both real (mask 1), so padding on either side adds
    nothing: a padded sequence has the loss of the same sequence unpadded. The first real token
    of a sequence has nothing before it and is never a target.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = input_ids[:, 1:]
    mask = attention_mask.astype(bool)
    weights = (mask[:, 1:] & mask[:, :-1]).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -jnp.sum(picked * weights) / jnp.maximum(jnp.sum(weights), 1.0)
