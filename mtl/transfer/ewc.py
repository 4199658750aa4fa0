"""Elastic weight consolidation (Kirkpatrick et al., "Overcoming catastrophic forgetting in
neural networks", PNAS 2017).

After task A, the diagonal of the Fisher information `F_i = E_x E_{y ~ p(y|x)} [(d log p(y|x)
/ d theta_i)^2]` says how much each parameter matters to A. While training task B the penalty

    (lambda / 2) * sum_i F_i (theta_i - theta_A,i)^2

holds the important ones near their values after A. The Fisher is estimated from per-example
gradients (one `vmap` over examples), with labels sampled from the model (the true Fisher) or
the data's labels (`empirical=True`, the "empirical Fisher").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
# (params, inputs [B, ...] or a dict of such arrays, e.g. token ids and masks) -> logits [B, C]
LogitsFn = Callable[[PyTree, jax.Array], jax.Array]


def fisher_diagonal(
    logits_fn: LogitsFn,
    params: PyTree,
    batches: Iterable[tuple[jax.Array, jax.Array]],
    rng: jax.Array,
    empirical: bool = False,
) -> PyTree:
    """Mean over all examples of the squared per-example gradient of `log p(y | x)`.

    `batches` yields `(inputs, labels)`; labels are used only when `empirical`. `inputs` is an
    array or a dict of arrays with a leading example axis. Memory: one gradient per example of a
    batch, so batches of a large trunk (BERT) must be small.
    """

    def example_log_prob(p, x, y):
        logits = logits_fn(p, jax.tree.map(lambda a: a[None], x))[0]
        return jax.nn.log_softmax(logits)[y]

    @jax.jit
    def batch_sum(p, x, y, key):
        if not empirical:
            y = jax.random.categorical(key, logits_fn(p, x))
        grads = jax.vmap(jax.grad(example_log_prob), in_axes=(None, 0, 0))(p, x, y)
        return jax.tree.map(lambda g: jnp.sum(jnp.square(g), axis=0), grads)

    total, count = None, 0
    for step, (x, y) in enumerate(batches):
        s = batch_sum(params, x, y, jax.random.fold_in(rng, step))
        total = s if total is None else jax.tree.map(jnp.add, total, s)
        count += jax.tree_util.tree_leaves(x)[0].shape[0]
    if total is None:
        raise ValueError("fisher_diagonal needs at least one batch.")
    return jax.tree.map(lambda t: t / count, total)


def ewc_penalty(params: PyTree, anchor: PyTree, fisher: PyTree, strength: float) -> jax.Array:
    """`strength / 2 * sum_i F_i (theta_i - anchor_i)^2` over the leaves of `fisher`."""
    terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)), params, anchor, fisher)
    return 0.5 * strength * sum(jax.tree_util.tree_leaves(terms))


def with_ewc(weighting, anchor: PyTree, fisher: PyTree, strength: float):
    """Any multi-task `Weighting` plus the EWC penalty on the shared parameters.

    The penalty's gradient `strength * F * (theta - anchor)` is added to the method's shared
    gradient, so EWC composes with every method of `mtl.weighting` in a multi-task run whose
    trunk was trained on earlier tasks (`anchor`, `fisher`: pytrees like the trunk params).
    """

    def update(objective, state, rng):
        out, state = weighting.update(objective, state, rng)
        penalty = jax.grad(ewc_penalty)(objective.shared, anchor, fisher, strength)
        shared = jax.tree.map(lambda g, p: g + p.astype(g.dtype), out.shared_grads, penalty)
        return out._replace(shared_grads=shared), state

    return weighting._replace(update=update)
