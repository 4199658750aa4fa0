"""Linear probes on cached features: the cheap way to measure a frozen trunk.

Feature extraction with a trained linear head (`finetune.strategy="feature_extraction"`) runs
the frozen trunk forward at every step. When only the head trains, the trunk's output for each
example never changes, so it can be computed once (`extract_features`) and a linear classifier
fitted on the cached vectors (`fit_linear_probe`): one forward pass over the data instead of one
per step and epoch. This is how SentEval itself evaluates sentence encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mtl.data import text


def extract_features(
    trunk: nnx.Module,
    inputs: Mapping[str, np.ndarray],
    batch_size: int = 128,
    pad_to_multiple: int = 16,
) -> np.ndarray:
    """The trunk's representation [N, features] of every example, in eval mode.

    Examples are processed sorted by length and each batch is cut to its longest sentence,
    so short sentences cost little; the output is in the original order.
    """
    graphdef, state = nnx.split(trunk)
    forward = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch, train=False))
    lengths = np.sum(inputs["attention_mask"], axis=1)
    order = np.argsort(lengths, kind="stable")
    n = len(order)
    out = np.empty((n, trunk.out_features), np.float32)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        rows = np.resize(index, batch_size)  # pad the last batch to the compiled shape
        batch = text.trim_padding({k: v[rows] for k, v in inputs.items()}, pad_to_multiple)
        out[index] = np.asarray(forward(state, batch))[: len(index)]
    return out


class LinearProbe(NamedTuple):
    mean: np.ndarray  # feature standardisation, from the training features
    scale: np.ndarray
    kernel: np.ndarray  # [features, classes]
    bias: np.ndarray  # [classes]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.kernel + self.bias

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.logits(features), -1) == labels))


def fit_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    l2: float = 1e-3,
    steps: int = 500,
    learning_rate: float = 1e-2,
) -> LinearProbe:
    """Softmax regression with an L2 penalty on standardised features, full-batch Adam."""
    mean = features.mean(0)
    scale = features.std(0) + 1e-6
    x = jnp.asarray((features - mean) / scale)
    y = jnp.asarray(labels)
    params = {"kernel": jnp.zeros((x.shape[1], num_classes)), "bias": jnp.zeros(num_classes)}
    tx = optax.adam(learning_rate)

    def loss_fn(p):
        logits = x @ p["kernel"] + p["bias"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + l2 * jnp.sum(jnp.square(p["kernel"]))

    @jax.jit
    def fit(params):
        def body(_, carry):
            params, opt_state = carry
            grads = jax.grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))[0]

    params = fit(params)
    return LinearProbe(mean, scale, np.asarray(params["kernel"]), np.asarray(params["bias"]))
