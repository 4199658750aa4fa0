"""iMAML (Rajeswaran et al. 2019): MAML's meta-gradient without differentiating the inner loop.

The inner loop solves a proximally regularised support problem from the meta-parameters θ,

    φ*(θ) = argmin_φ  L_support(φ) + λ/2 |φ - θ|²,

(here by `inner_steps` gradient steps, as the paper's Omniglot runs), and the meta-gradient of
the query loss follows from the implicit function theorem, whatever path reached φ*:

    d L_query(φ*) / dθ = (I + H / λ)^-1 ∇L_query(φ*),    H = ∇² L_support(φ*),

solved by `cg_steps` steps of conjugate gradient on Hessian-vector products (never forming H).
Memory is that of one inner step, not of `inner_steps` (the unrolled graph is never built).
Everything else (heads, batch norm, `adapt`/`predict`) is the MAML learner's, with
`adapt="all"` and the proximal term added to the inner loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.scipy.sparse.linalg import cg

from mtl.errors import ConfigError
from mtl.meta import maml as maml_lib
from mtl.meta import model as mm
from mtl.meta.inner_loop import inner_loop
from mtl.meta.protocol import BN_TEST, check_choice

PyTree = Any


def _tree_dot(a: PyTree, b: PyTree) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def proximal(loss: jax.Array, fast: PyTree, anchor: PyTree, lam: float) -> jax.Array:
    """`loss + lam / 2 * |fast - anchor|²`."""
    diff = jax.tree.map(lambda f, a: f - a, fast, anchor)
    return loss + 0.5 * lam * _tree_dot(diff, diff)


def implicit_gradient(
    support_loss: Callable[[PyTree], jax.Array],
    query_grad: PyTree,
    adapted: PyTree,
    lam: float,
    cg_steps: int,
) -> PyTree:
    """`(I + H / lam)^-1 query_grad` with `H` the Hessian of `support_loss` at `adapted`, by
    `cg_steps` conjugate-gradient steps on Hessian-vector products (forward over reverse)."""
    grad_fn = jax.grad(support_loss)

    def operator(v: PyTree) -> PyTree:
        hv = jax.jvp(grad_fn, (adapted,), (v,))[1]
        return jax.tree.map(lambda a, b: a + b / lam, v, hv)

    # The system is symmetric positive definite where L_support is convex near φ*; tol=0 runs
    # every step (a fixed cost per meta-step, the same under vmap for every episode).
    solution, _ = cg(operator, query_grad, tol=0.0, maxiter=cg_steps)
    return solution


@dataclasses.dataclass(frozen=True)
class IMamlOptions:
    """iMAML's `config.meta` options; the head and batch-norm fields are the MAML family's."""

    inner_lr: float = 0.4
    inner_steps: int = 1
    imaml_lambda: float = 1.0  # strength of the proximal term λ
    cg_steps: int = 5  # conjugate-gradient steps for the implicit meta-gradient
    # learned | zero | proto (per episode, any number of ways; proto starts the head at the
    # support prototypes, so a small inner rate on a pretrained trunk still gives a classifier)
    head_init: str = "learned"
    bn_test: str = "batch"

    @property
    def head_per_episode(self) -> bool:
        return self.head_init != "learned"

    def num_outputs(self, kind: str, ways: int) -> int:
        return 1 if kind == "regression" else int(ways)

    def check(self, kind: str, head_hidden: Sequence[int] = ()) -> None:
        check_choice("bn_test", self.bn_test, BN_TEST)
        mm.check_head(kind, self.head_init, head_hidden)
        for field in ("inner_steps", "cg_steps"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"meta.{field} must be an integer >= 1, got {value!r}.")
        if self.inner_lr <= 0 or self.imaml_lambda <= 0:
            raise ConfigError(
                f"meta.inner_lr and meta.imaml_lambda must be positive, got {self.inner_lr} "
                f"and {self.imaml_lambda}."
            )

    def build(self, model: mm.MetaModel, params: PyTree, state: PyTree) -> IMaml:
        self.check(model.kind)
        maml_opts = maml_lib.MamlOptions(
            inner_lr=self.inner_lr,
            inner_steps=self.inner_steps,
            first_order=True,
            head_init=self.head_init,
            bn_test=self.bn_test,
        )
        return IMaml(maml_lib.build(model, params, state, maml_opts), self)


@dataclasses.dataclass(frozen=True)
class IMaml:
    """An iMAML learner around a MAML one (its network, heads and batch norm)."""

    maml: maml_lib.Maml
    opts: IMamlOptions

    min_adapt_steps: ClassVar[int] = 1

    @property
    def head_per_episode(self) -> bool:
        return self.opts.head_per_episode

    @property
    def bn_test(self) -> str:
        return self.opts.bn_test

    def init(self, params: PyTree, state: PyTree) -> tuple[PyTree, PyTree]:
        return self.maml.init(params, state)

    def _support_loss(self, meta, state, support, train_bn):
        """`fast -> (support loss, new BN state)` (without the proximal term)."""

        def loss(fast, step=0):
            out, new = self.maml.forward(meta, state, fast, support["x"], step, train_bn)
            return self.maml.model.loss(out, support["y"]), new

        return loss

    def adapt(self, meta, state, support, *, ways: int, steps: int, train_bn: bool, observe=None):
        """Gradient steps on the proximal support loss from θ: `(φ, trace)`; no gradient
        flows through them (the meta-gradient is implicit)."""
        meta = jax.lax.stop_gradient(meta)
        anchor = self.maml.initial(meta, state, support, ways=ways, train_bn=train_bn)
        support_loss = self._support_loss(meta, state, support, train_bn)

        def loss_fn(fast, step):
            loss, new = support_loss(fast, step)
            return proximal(loss, fast, anchor, self.opts.imaml_lambda), new

        rate = jnp.full((1,), self.opts.inner_lr, jnp.float32)
        rates = jax.tree.map(lambda _: rate, anchor)
        return inner_loop(loss_fn, anchor, rates, steps=steps, first_order=True, observe=observe)

    def predict(self, meta, state, adapted, x, *, ways: int, steps: int, train_bn: bool):
        del ways
        return self.maml.forward(meta, state, adapted, x, steps, train_bn)[0]

    def task_grads(self, meta, state, episode, *, ways: int):
        """One episode's implicit meta-gradient (like `meta`), query loss, metrics, BN state."""
        support, query = episode["support"], episode["query"]
        adapted, trace = self.adapt(
            meta, state, support, ways=ways, steps=self.opts.inner_steps, train_bn=True
        )

        def query_loss(fast):
            out, new = self.maml.forward(meta, state, fast, query["x"], 0, True)
            return self.maml.model.loss(out, query["y"]), (out, new)

        (loss, (out, new)), grad_q = jax.value_and_grad(query_loss, has_aux=True)(adapted)
        support_loss = self._support_loss(jax.lax.stop_gradient(meta), state, support, True)
        direction = implicit_gradient(
            lambda f: support_loss(f)[0], grad_q, adapted, self.opts.imaml_lambda,
            self.opts.cg_steps,
        )  # fmt: skip
        # θ enters φ* only through the anchor `initial(θ)` (a learned head, or the trunk of a
        # per-episode head): pull the direction back through it.
        _, pull = jax.vjp(
            lambda m: self.maml.initial(m, state, support, ways=ways, train_bn=True), meta
        )
        (grads,) = pull(direction)
        metrics = {
            "loss": loss,
            "metric": self.maml.model.metric(out, query["y"]),
            "support_loss": trace["loss"][0],
        }
        return grads, {"metrics": metrics, "state": new}

    def meta_grads(self, meta, state, batch, *, ways: int, step: jax.Array):
        del step
        grads, aux = jax.vmap(lambda ep: self.task_grads(meta, state, ep, ways=ways))(batch)
        return mm.episode_mean((grads, aux))

    def curve(self, meta, state, episode, *, ways: int, steps: int) -> jax.Array:
        """Query metric before adaptation and after each of `steps` inner steps."""
        train_bn = self.bn_test == "batch"
        query = episode["query"]

        def metric(fast, step):
            out, _ = self.maml.forward(meta, state, fast, query["x"], step, train_bn)
            return self.maml.model.metric(out, query["y"])

        start = self.maml.initial(meta, state, episode["support"], ways=ways, train_bn=train_bn)
        _, trace = self.adapt(
            meta, state, episode["support"], ways=ways, steps=steps, train_bn=train_bn,
            observe=metric,
        )  # fmt: skip
        return jnp.concatenate([metric(start, 0)[None], trace["observed"]])
