"""Reptile (Nichol et al. 2018): move the initialisation towards the adapted weights.

Each episode adapts with `inner_steps` first-order steps of `inner_loop` on all of its
examples (support and query together: Reptile needs no held-out set while training), and the
meta-"gradient" is the mean of `initial - adapted` over the meta-batch; the outer optimizer
(`config.optimizer`, plain SGD in the paper) applies it. Evaluation adapts on the support set
and scores the query set, exactly as for MAML.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.meta import maml
from mtl.meta import model as mm
from mtl.meta.maml import Maml, MamlOptions

PyTree = Any


def check_options(opts: MamlOptions) -> None:
    """A `ConfigError` for the MAML options that Reptile does not take."""
    if opts.learn_inner_lr != "none" or opts.per_step_bn or opts.multi_step_loss:
        raise ConfigError(
            "meta.method='reptile' takes no learned inner rates, per-step batch norm or "
            "multi-step loss (those are MAML++ options); set them to none/False."
        )
    if opts.adapt != "all" or opts.head_init != "learned":
        raise ConfigError("meta.method='reptile' needs meta.adapt='all', head_init='learned'.")


@dataclasses.dataclass(frozen=True)
class ReptileOptions(MamlOptions):
    """Reptile's `config.meta` options: the MAML family's, less the MAML++ ones."""

    def check(self, kind: str, head_hidden: Sequence[int] = ()) -> None:
        super().check(kind, head_hidden)
        check_options(self)

    def build(self, model: mm.MetaModel, params: PyTree, state: PyTree) -> Reptile:
        return Reptile(maml.build(model, params, state, self))


@dataclasses.dataclass(frozen=True)
class Reptile:
    """Reptile on top of a `Maml` learner that holds the model and inner-loop options."""

    maml: Maml

    min_adapt_steps: ClassVar[int] = 1

    @property
    def head_per_episode(self) -> bool:
        return self.maml.head_per_episode

    @property
    def bn_test(self) -> str:
        return self.maml.bn_test

    def check(self) -> None:
        check_options(self.maml.opts)

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
        mean = mm.episode_mean
        return {"params": mean(deltas)}, mean(aux)

    def curve(self, meta, state, episode, *, ways: int, steps: int) -> jax.Array:
        return self.maml.curve(meta, state, episode, ways=ways, steps=steps)

    def adapt(self, meta, state, support, *, ways: int, steps: int, train_bn: bool):
        """Adapts to a support set as MAML does (evaluation and the adapt/predict API)."""
        return self.maml.adapt(meta, state, support, ways=ways, steps=steps, train_bn=train_bn)

    def predict(self, meta, state, adapted, x, *, ways: int, steps: int, train_bn: bool):
        return self.maml.predict(meta, state, adapted, x, ways=ways, steps=steps, train_bn=train_bn)
