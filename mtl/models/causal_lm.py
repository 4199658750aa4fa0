"""The causal language-modelling loss: predict each token from the ones before it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def causal_lm_loss(logits: jax.Array, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the real target tokens, in float32.

    Position t's logits [batch, length, vocab] predict token t + 1. A target counts when it
    and the token predicting it are both real (mask 1), so padding on either side adds
    nothing: a padded sequence has the loss of the same sequence unpadded. The first real token
    of a sequence has nothing before it and is never a target.
    """
    labels = jnp.where(attention_mask.astype(bool), input_ids, -1)
    picked, weights, _ = _targets(logits, labels)
    return -jnp.sum(picked * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# --- as a task of the engine: labels are the token ids, -1 at padding ---------------------


def lm_labels(inputs) -> tuple:
    """`(labels, mask)` of a causal-LM task for tokenised `inputs`: the token ids with -1 at
    padding [N, length], and which sequences have a target at all [N]."""
    ids = np.asarray(inputs["input_ids"])
    real = np.asarray(inputs["attention_mask"]).astype(bool)
    labels = np.where(real, ids, -1).astype(np.int32)
    return labels, real.sum(axis=1) >= 2


def _targets(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Log-probabilities of each next token, its weight (1 where it and the token before it
    are real) and whether the argmax predicted it; all [batch, length - 1]."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets, before = labels[:, 1:], labels[:, :-1]
    weights = ((targets >= 0) & (before >= 0)).astype(jnp.float32)
    safe = jnp.clip(targets, 0, logits.shape[-1] - 1)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return picked, weights, hits


def sequence_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sequence mean next-token negative log-likelihood [batch] (the engine's per-example
    loss of a `causal_lm` task; `labels` from `lm_labels`)."""
    picked, weights, _ = _targets(logits, labels)
    return -jnp.sum(picked * weights, -1) / jnp.maximum(jnp.sum(weights, -1), 1.0)


def next_token_accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sequence share of next tokens the argmax predicts [batch]."""
    _, weights, hits = _targets(logits, labels)
    return jnp.sum(hits * weights, -1) / jnp.maximum(jnp.sum(weights, -1), 1.0)
