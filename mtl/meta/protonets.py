"""Prototypical networks (Snell et al. 2017): the metric-learning baseline.

An episode's support examples are embedded by the trunk; each class's prototype is the mean
of its embeddings, and a query is classified by a softmax over minus its squared Euclidean
distances to the prototypes. Nothing adapts per episode, so any number of ways works.

Batch norm: support and query go through the trunk as one batch. During meta-training it is
normalised with that batch's statistics; at test time `bn_test="running"` (the default, as in
the original code's `model.eval()`) uses the running averages, and `bn_test="batch"` the
episode's own statistics (transductive, as MAML).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from mtl.errors import ConfigError
from mtl.meta import model as mm
from mtl.meta.protocol import BN_TEST, check_choice

PyTree = Any


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """[n, m] squared Euclidean distances between rows of `a` [n, d] and `b` [m, d]."""
    return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), -1)


def proto_logits(z_support, y_support, z_query, ways: int) -> jax.Array:
    """Logits [queries, ways] = -|z_q - c_k|^2 with prototypes c_k from the support set."""
    return -squared_distances(z_query, mm.class_means(z_support, y_support, ways))


@dataclasses.dataclass(frozen=True)
class ProtoNetOptions:
    """ProtoNets' `config.meta` options (the other fields of the block are not read)."""

    bn_test: str = "running"  # running (as the original code's model.eval()) | batch

    head_per_episode: ClassVar[bool] = True  # prototypes: any number of ways

    def check(self, kind: str, head_hidden: Sequence[int] = ()) -> None:
        del head_hidden  # no head
        if kind != "classification":
            raise ConfigError("meta.method='protonets' needs classification episodes.")
        check_choice("bn_test", self.bn_test, BN_TEST)

    def num_outputs(self, kind: str, ways: int) -> None:
        return None  # the trunk only

    def build(self, model: mm.MetaModel, params: PyTree, state: PyTree) -> ProtoNet:
        del params, state
        learner = ProtoNet(model, self)
        learner.check()
        return learner


@dataclasses.dataclass(frozen=True)
class ProtoNet:
    """ProtoNets with a trunk from `mtl.meta.model.build(..., num_outputs=None)`."""

    model: mm.MetaModel
    opts: ProtoNetOptions = ProtoNetOptions()

    min_adapt_steps: ClassVar[int] = 0  # nothing adapts by gradient
    head_per_episode: ClassVar[bool] = True

    @property
    def bn_test(self) -> str:
        return self.opts.bn_test

    def check(self) -> None:
        self.opts.check(self.model.kind)

    def init(self, params: PyTree, state: PyTree) -> tuple[PyTree, PyTree]:
        return {"params": {"trunk": params["trunk"]}}, state

    def embed_episode(self, meta, state, support_x, query_x, train_bn: bool):
        """Support and query embeddings from one pass of both through the trunk."""
        x = mm.join_examples(support_x, query_x)  # text: dicts
        z, new = self.model.trunk.apply(meta["params"]["trunk"], state["trunk"], x, train=train_bn)
        n = jax.tree.leaves(support_x)[0].shape[0]
        return z[:n], z[n:], {"trunk": new}

    def task_loss(self, meta, state, episode, *, ways: int, train_bn: bool = True):
        s, q = episode["support"], episode["query"]
        z_s, z_q, new = self.embed_episode(meta, state, s["x"], q["x"], train_bn)
        logits = proto_logits(z_s, s["y"], z_q, ways)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, q["y"]))
        metric = jnp.mean((jnp.argmax(logits, -1) == q["y"]).astype(jnp.float32))
        return loss, {"metrics": {"loss": loss, "metric": metric}, "state": new}

    def meta_grads(self, meta, state, batch, *, ways: int, step: jax.Array):
        del step

        def mean_loss(meta):
            losses, aux = jax.vmap(lambda ep: self.task_loss(meta, state, ep, ways=ways))(batch)
            return jnp.mean(losses), aux

        grads, aux = jax.grad(mean_loss, has_aux=True)(meta)
        return grads, mm.episode_mean(aux)

    def curve(self, meta, state, episode, *, ways: int, steps: int) -> jax.Array:
        """Query accuracy [1]: prototypes need no inner steps (`steps` is ignored)."""
        del steps
        _, aux = self.task_loss(meta, state, episode, ways=ways, train_bn=self.bn_test == "batch")
        return aux["metrics"]["metric"][None]

    def adapt(self, meta, state, support, *, ways: int, steps: int, train_bn: bool):
        """`(support, {})`: nothing adapts. `predict` embeds the support set together with its
        queries, in one batch as in meta-training (it matters with `bn_test="batch"`)."""
        del meta, state, ways, steps, train_bn
        return support, {}

    def predict(self, meta, state, adapted, x, *, ways: int, steps: int, train_bn: bool):
        """Logits [n, ways] of `x` against the prototypes of the support set `adapted`."""
        del steps
        z_s, z_q, _ = self.embed_episode(meta, state, adapted["x"], x, train_bn)
        return proto_logits(z_s, adapted["y"], z_q, ways)
