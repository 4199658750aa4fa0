"""Reptile (Nichol et al. 2018): move the initialisation towards the adapted weights.

Each episode adapts with `inner_steps` first-order steps of `inner_loop` on all of its
examples (support and query together: Reptile needs no held-out set while training), and the
meta-"gradient" is the mean of `initial - adapted` over the meta-batch; the outer optimizer
(`config.optimizer`, plain SGD in the paper) applies it. Evaluation adapts on the support set
and scores the query set, exactly as for MAML.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.meta.maml import Maml

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Reptile:
    """Reptile on top of a `Maml` learner that holds the model and inner-loop options."""

    maml: Maml

    def check(self) -> None:
        o = self.maml.opts
        if o.learn_inner_lr != "none" or o.per_step_bn or o.multi_step_loss:
            raise ConfigError(
                "meta.method='reptile' takes no learned inner rates, per-step batch norm or "
                "multi-step loss (those are MAML++ options); set them to none/False."
            )
        if o.adapt != "all" or o.head_init != "learned":
            raise ConfigError("meta.method='reptile' needs meta.adapt='all', head_init='learned'.")

    def init(self, params: PyTree, state: PyTree) -> tuple[PyTree, PyTree]:
        return self.maml.init(params, state)

    def task_delta(self, meta, state, episode, *, ways: int):
        """`initial - adapted` for one episode, with its metrics and BN statistics."""
        s, q = episode["support"], episode["query"]
        data = {k: jnp.concatenate([s[k], q[k]]) for k in ("x", "y")}
        steps = self.maml.opts.inner_steps
        initial = self.maml.initial(meta, state, data, ways=ways, train_bn=True)
        fast, trace = self.maml.adapt(meta, state, data, ways=ways, steps=steps, train_bn=True)
        delta = jax.tree_util.tree_map(lambda a, b: a - b, initial, fast)
        out, new = self.maml.forward(meta, state, fast, data["x"], steps, True)
        metrics = {
            "loss": self.maml.model.loss(out, data["y"]),
            "metric": self.maml.model.metric(out, data["y"]),
            "support_loss": trace["loss"][0],
        }
        return delta, {"metrics": metrics, "state": new}

    def meta_grads(self, meta, state, batch, *, ways: int, step: jax.Array):
        del step
        deltas, aux = jax.vmap(lambda ep: self.task_delta(meta, state, ep, ways=ways))(batch)
        mean = lambda tree: jax.tree_util.tree_map(lambda a: jnp.mean(a, 0), tree)
        return {"params": mean(deltas)}, mean(aux)

    def curve(self, meta, state, episode, *, ways: int, steps: int) -> jax.Array:
        return self.maml.curve(meta, state, episode, ways=ways, steps=steps)
