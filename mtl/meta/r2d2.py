"""R2D2 (Bertinetto et al. 2019): a ridge-regression head solved in closed form per episode.

The support features X [n, d] (with a constant 1 appended, the intercept) and one-hot labels
Y [n, ways] give the ridge solution

    W = argmin |X W - Y|² + λ |W|²  = X^T (X X^T + λ I_n)^-1 Y      (Woodbury: an n x n system)

and a query is scored by `scale * [z, 1] W`. The solve is differentiable, so the trunk, λ and
the scale are meta-learned through it (MetaOptNet's differentiable convex head, with ridge
regression as its solver). Nothing adapts by gradient steps: any number of ways works, and
`adapt` / `predict` are those of ProtoNets (the support set is embedded with the queries).
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


def ridge_weights(x: jax.Array, y_onehot: jax.Array, lam: jax.Array) -> jax.Array:
    """[d, ways] ridge solution `x^T (x x^T + lam I)^-1 y` for `x` [n, d], `y_onehot` [n, ways]."""
    gram = x @ x.T + lam * jnp.eye(x.shape[0], dtype=x.dtype)
    return x.T @ jnp.linalg.solve(gram, y_onehot)


def _with_intercept(z: jax.Array) -> jax.Array:
    return jnp.concatenate([z, jnp.ones((z.shape[0], 1), z.dtype)], axis=-1)


def ridge_logits(z_support, y_support, z_query, ways: int, head: PyTree) -> jax.Array:
    """Query logits [m, ways] of the ridge head fitted on the support features."""
    lam = jnp.exp(head["log_lambda"])
    onehot = jax.nn.one_hot(y_support, ways, dtype=z_support.dtype)
    w = ridge_weights(_with_intercept(z_support), onehot, lam)
    return head["scale"] * (_with_intercept(z_query) @ w)


@dataclasses.dataclass(frozen=True)
class R2D2Options:
    """R2D2's `config.meta` options: the starting λ and logit scale (both meta-learned)."""

    ridge_lambda: float = 1.0
    # The ridge fit reproduces one-hot targets, so its raw logits lie near [0, 1]: a scale of
    # 10 makes the softmax confident enough from the start to train the trunk through it.
    ridge_scale: float = 10.0
    bn_test: str = "running"

    head_per_episode: ClassVar[bool] = True

    def check(self, kind: str, head_hidden: Sequence[int] = ()) -> None:
        del head_hidden
        if kind != "classification":
            raise ConfigError("meta.method='r2d2' needs classification episodes.")
        check_choice("bn_test", self.bn_test, BN_TEST)
        if self.ridge_lambda <= 0:
            raise ConfigError(f"meta.ridge_lambda must be positive, got {self.ridge_lambda}.")

    def num_outputs(self, kind: str, ways: int) -> None:
        return None  # the trunk only

    def build(self, model: mm.MetaModel, params: PyTree, state: PyTree) -> R2D2:
        del params, state
        self.check(model.kind)
        return R2D2(model, self)


@dataclasses.dataclass(frozen=True)
class R2D2:
    """Meta-parameters `{"params": {"trunk"}, "ridge": {"log_lambda", "scale"}}`."""

    model: mm.MetaModel
    opts: R2D2Options

    min_adapt_steps: ClassVar[int] = 0
    head_per_episode: ClassVar[bool] = True

    @property
    def bn_test(self) -> str:
        return self.opts.bn_test

    def init(self, params: PyTree, state: PyTree) -> tuple[PyTree, PyTree]:
        ridge = {
            "log_lambda": jnp.log(jnp.float32(self.opts.ridge_lambda)),
            "scale": jnp.float32(self.opts.ridge_scale),
        }
        return {"params": {"trunk": params["trunk"]}, "ridge": ridge}, state

    def _logits(self, meta, state, support, query_x, ways, train_bn):
        x = mm.join_examples(support["x"], query_x)
        z, new = self.model.embed(meta["params"], state, x, train=train_bn)
        n = support["y"].shape[0]
        return ridge_logits(z[:n], support["y"], z[n:], ways, meta["ridge"]), new

    def task_loss(self, meta, state, episode, *, ways: int, train_bn: bool = True):
        query = episode["query"]
        logits, new = self._logits(meta, state, episode["support"], query["x"], ways, train_bn)
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, query["y"]))
        metric = jnp.mean((jnp.argmax(logits, -1) == query["y"]).astype(jnp.float32))
        return loss, {"metrics": {"loss": loss, "metric": metric}, "state": new}

    def meta_grads(self, meta, state, batch, *, ways: int, step: jax.Array):
        del step

        def mean_loss(meta):
            losses, aux = jax.vmap(lambda ep: self.task_loss(meta, state, ep, ways=ways))(batch)
            return jnp.mean(losses), aux

        grads, aux = jax.grad(mean_loss, has_aux=True)(meta)
        return grads, mm.episode_mean(aux)

    def curve(self, meta, state, episode, *, ways: int, steps: int) -> jax.Array:
        del steps
        _, aux = self.task_loss(meta, state, episode, ways=ways, train_bn=self.bn_test == "batch")
        return aux["metrics"]["metric"][None]

    def adapt(self, meta, state, support, *, ways: int, steps: int, train_bn: bool):
        """`(support, {})`: the ridge head is solved in `predict`, with the queries' batch."""
        del meta, state, ways, steps, train_bn
        return support, {}

    def predict(self, meta, state, adapted, x, *, ways: int, steps: int, train_bn: bool):
        del steps
        return self._logits(meta, state, adapted, x, ways, train_bn)[0]
