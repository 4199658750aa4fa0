"""The MAML family: MAML, first-order MAML, ANIL, Meta-SGD and the MAML++ options.

All of them adapt with `inner_loop` and differ only in what adapts and how fast:

| variant          | options                                                          |
| ---------------- | ---------------------------------------------------------------- |
| MAML             | (defaults)                                                       |
| first-order MAML | `first_order=True`                                               |
| ANIL             | `adapt="head"`: only the head adapts; trunk features computed once |
| BOIL             | `adapt="body"`: only the trunk adapts; the head stays as learned   |
| LoRA inner loop  | `adapt="lora"`: the trunk's LoRA factors and the head adapt        |
| Meta-SGD         | `learn_inner_lr="per_param"`: a learned rate for every weight     |
| MAML++           | `learn_inner_lr="per_layer_step"`, `multi_step_loss`, `per_step_bn` |

Meta-parameters are `{"params": {"trunk", "head"}, "inner_lrs": ...}` (`inner_lrs` only when
learned); the outer loop learns all of them, LoRA factors included. `adapt="lora"` needs a
trunk with LoRA factors (`meta.lora_rank` > 0 adds them to every layer matching
`meta.lora_targets`; `mtl.transfer.lora`); it is how a pretrained encoder too big to adapt
whole in every episode adapts (Hu et al. 2022's factors, meta-learned).

Batch norm: during meta-training every forward pass normalises with the statistics
of its own batch (the support set in the inner loop, the query set for the meta-loss), as in
MAML. At test time `bn_test="batch"` does the same (transductive: a query prediction depends
on the other queries of its batch); `bn_test="running"` uses running averages collected during
meta-training instead (per inner step with `per_step_bn`, MAML++'s BNRS), so predictions are
per example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.meta import model as mm
from mtl.meta.inner_loop import inner_loop
from mtl.meta.protocol import BN_TEST, check_choice
from mtl.transfer.lora import DEFAULT_TARGETS

PyTree = Any

ADAPT = ("all", "head", "body", "lora")
LEARN_INNER_LR = ("none", "per_param", "per_layer_step")
__all__ = ["ADAPT", "BN_TEST", "LEARN_INNER_LR", "Maml", "MamlOptions", "build", "msl_weights"]


@dataclasses.dataclass(frozen=True)
class MamlOptions:
    """What adapts and how; see the module docstring. These fields and defaults are the
    `config.meta` options of the MAML family (`configs/meta_common.py` reads them from here).
    """

    inner_lr: float = 0.4  # on the mean support loss
    inner_steps: int = 1  # during meta-training
    first_order: bool = False  # first-order MAML: no gradient through the inner gradients
    adapt: str = "all"  # all | head (ANIL) | body (BOIL) | lora (the trunk's LoRA factors)
    learn_inner_lr: str = "none"  # none | per_param (Meta-SGD) | per_layer_step (MAML++ LSLR)
    multi_step_loss: bool = False  # MAML++: query loss after every inner step, annealed
    msl_anneal_steps: int = 0  # steps over which the multi-step loss anneals to the last step
    per_step_bn: bool = False  # MAML++: batch-norm weights and statistics per inner step
    head_init: str = "learned"  # learned | zero | proto (the last two work for any ways)
    bn_test: str = "batch"  # batch (transductive, as MAML) | running
    remat: bool = False  # recompute inner-step activations in the backward pass (less memory)
    lora_rank: int = 0  # > 0: LoRA factors of this rank in the trunk (needed by adapt="lora")
    lora_alpha: float = 16.0  # their scale is alpha / rank
    lora_targets: str = DEFAULT_TARGETS  # regex of the layer paths that get them

    @property
    def head_per_episode(self) -> bool:
        """A head zeroed or made of prototypes per episode works for any number of ways."""
        return self.head_init != "learned"

    def num_outputs(self, kind: str, ways: int) -> int:
        return 1 if kind == "regression" else int(ways)

    def build(self, model: mm.MetaModel, params: PyTree, state: PyTree) -> Maml:
        return build(model, params, state, self)

    def check(self, kind: str, head_hidden: Sequence[int] = ()) -> None:
        """Raises a `ConfigError` naming the `meta.*` field that cannot work."""
        check_choice("adapt", self.adapt, ADAPT)
        check_choice("learn_inner_lr", self.learn_inner_lr, LEARN_INNER_LR)
        check_choice("bn_test", self.bn_test, BN_TEST)
        if not isinstance(self.inner_steps, int) or self.inner_steps < 1:
            raise ConfigError(
                f"meta.inner_steps must be an integer >= 1, got {self.inner_steps!r}."
            )
        if self.inner_lr <= 0:
            raise ConfigError(f"meta.inner_lr must be positive, got {self.inner_lr}.")
        mm.check_head(kind, self.head_init, head_hidden)
        if self.adapt == "head" and self.per_step_bn:
            raise ConfigError(
                "meta.per_step_bn changes the trunk at every inner step, but meta.adapt='head' "
                "(ANIL) keeps the trunk fixed and computes its features once. Turn one of them off."
            )
        if self.adapt == "body" and self.head_init != "learned":
            raise ConfigError(
                "meta.adapt='body' (BOIL) keeps the head fixed in the inner loop, so it must be "
                f"meta-learned: use meta.head_init='learned' (got {self.head_init!r})."
            )
        if (self.adapt == "lora") != (self.lora_rank > 0):
            raise ConfigError(
                "meta.adapt='lora' adapts the trunk's LoRA factors: set meta.lora_rank > 0 "
                "with it (and only with it); got "
                f"adapt={self.adapt!r}, lora_rank={self.lora_rank}."
            )

    def lora(self) -> tuple[int, float, str] | None:
        """`(rank, alpha, targets)` of the LoRA factors the trunk needs, if any."""
        return (self.lora_rank, self.lora_alpha, self.lora_targets) if self.lora_rank else None


def msl_weights(steps: int, anneal_steps: int, step: jax.Array) -> jax.Array:
    """MAML++'s multi-step loss weights [steps] at training step `step`.

    Every inner step's query loss starts with weight 1/steps; over `anneal_steps` training
    steps the weights of all but the last decay linearly to 0.03/steps and the last takes the
    rest, so training ends on the final-step loss alone (as MAML++'s per-epoch annealing).
    """
    if steps == 1:
        return jnp.ones((1,))
    uniform = 1.0 / steps
    progress = jnp.clip(step / max(anneal_steps, 1), 0.0, 1.0) if anneal_steps > 0 else 0.0
    early = jnp.maximum(uniform * (1.0 - progress), 0.03 / steps)
    weights = jnp.full((steps,), early)
    return weights.at[-1].set(1.0 - early * (steps - 1))


@dataclasses.dataclass(frozen=True)
class Maml:
    """A MAML-family learner: pure functions of (meta-params, BN state, episodes)."""

    model: mm.MetaModel
    opts: MamlOptions
    bn_mask: PyTree  # trunk params: True at batch-norm scale / bias
    state_mask: PyTree  # trunk state: True at per-step statistics (all, with per_step_bn)
    lora_mask: PyTree  # trunk params: True at LoRA factors

    min_adapt_steps: ClassVar[int] = 1

    @property
    def head_per_episode(self) -> bool:
        return self.opts.head_per_episode

    @property
    def bn_test(self) -> str:
        return self.opts.bn_test

    # ---- meta-parameters -------------------------------------------------------------
    def init(self, params: PyTree, state: PyTree) -> tuple[PyTree, PyTree]:
        """Meta-parameters and BN state from freshly built ones."""
        o = self.opts
        params = dict(params)
        if o.head_init != "learned":
            params.pop("head", None)  # built per episode
        if o.per_step_bn:
            count = o.inner_steps + 1
            params["trunk"] = mm.stack_steps(params["trunk"], self.bn_mask, count)
            state = {"trunk": mm.stack_steps(state["trunk"], self.state_mask, count)}
        meta = {"params": params}
        if o.learn_inner_lr != "none":
            meta["inner_lrs"] = self._learned_rates(params)
        return meta, state

    @property
    def _fixed_trunk(self) -> PyTree | None:
        """Bool mask of the trunk leaves the inner loop keeps fixed (None: none is fixed):
        per-step BN leaves, and with `adapt="lora"` everything but the LoRA factors."""
        if self.opts.adapt == "lora":
            return jax.tree_util.tree_map(lambda lora: not lora, self.lora_mask)
        return self.bn_mask if self.opts.per_step_bn else None

    @property
    def _step_bn(self) -> PyTree | None:
        """The BN mask when BN leaves are per step, else None."""
        return self.bn_mask if self.opts.per_step_bn else None

    @property
    def adapts_trunk(self) -> bool:
        return self.opts.adapt in ("all", "body", "lora")

    @property
    def adapts_head(self) -> bool:
        return self.opts.adapt != "body"

    def _fast_template(self, params: PyTree) -> PyTree:
        """Structure of the weights the inner loop adapts (None at fixed leaves)."""
        template = {}
        if self.adapts_trunk:
            template["trunk"] = _without(params["trunk"], self._fixed_trunk)
        if not self.adapts_head:
            pass  # BOIL
        elif self.opts.head_init == "learned":
            template["head"] = params["head"]
        else:  # built per episode, its shape depends on the ways: one rate per tensor
            template["head"] = {"out": {"kernel": jnp.zeros(()), "bias": jnp.zeros(())}}
        return template

    def _learned_rates(self, params: PyTree) -> PyTree:
        lr, steps = self.opts.inner_lr, self.opts.inner_steps
        if self.opts.learn_inner_lr == "per_layer_step":
            make = lambda leaf: jnp.full((steps,), lr, jnp.float32)
        else:
            make = lambda leaf: jnp.full((1, *leaf.shape), lr, jnp.float32)
        return jax.tree_util.tree_map(make, self._fast_template(params))

    def _rates(self, meta: PyTree) -> PyTree:
        """Per-step rates shaped like the adapted weights (see `inner_loop`)."""
        if "inner_lrs" in meta:
            return meta["inner_lrs"]
        const = jnp.full((1,), self.opts.inner_lr, jnp.float32)
        return jax.tree_util.tree_map(lambda _: const, self._fast_template(meta["params"]))

    # ---- adaptation --------------------------------------------------------------------
    def _embed(self, trunk_params, state, step, x, train_bn):
        """Trunk features with the BN entries of `step`; returns `(z, new trunk state)`."""
        p = mm.at_step(trunk_params, self._step_bn, step)
        s = mm.at_step(state["trunk"], self.state_mask if self.opts.per_step_bn else None, step)
        return self.model.trunk.apply(p, s, x, train=train_bn)

    def initial(self, meta, state, support, *, ways: int, train_bn: bool) -> PyTree:
        """The weights the inner loop starts from for this support set."""
        params = meta["params"]
        head_init = self.opts.head_init
        if head_init == "learned":
            head = params["head"]
        elif head_init == "zero":
            head = mm.zero_head(self.model.features, ways)
        else:
            z, _ = self._embed(params["trunk"], state, 0, support["x"], train_bn)
            head = mm.proto_head(z, support["y"], ways)
        fast = {"head": head} if self.adapts_head else {}  # BOIL's head is meta["params"]'s
        if self.adapts_trunk:
            fast["trunk"] = _without(params["trunk"], self._fixed_trunk)
        return fast

    def forward(self, meta, state, fast, x, step, train_bn, z=None):
        """Outputs of the network with weights `fast` after `step` inner steps, new BN state.

        ANIL's trunk does not adapt: pass its features as `z` to skip the trunk.
        """
        params = meta["params"]
        head = fast["head"] if self.adapts_head else params["head"]
        if not self.adapts_trunk:
            if z is None:
                z, _ = self._embed(params["trunk"], state, 0, x, train_bn)
            return self.model.outputs(head, z), state
        trunk = _fill(fast["trunk"], params["trunk"])
        z, new = self._embed(trunk, state, step, x, train_bn)
        return self.model.outputs(head, z), {"trunk": new}

    def adapt(self, meta, state, support, *, ways: int, steps: int, train_bn: bool, observe=None):
        """Adapts to one episode's support set: `(fast, trace)` as `inner_loop` returns them.

        `observe(fast, step)` is evaluated after each step (see `inner_loop`).
        """
        x_s, y_s = support["x"], support["y"]
        z_s = None
        if self.opts.adapt == "head":  # ANIL: support features once
            z_s, _ = self._embed(meta["params"]["trunk"], state, 0, x_s, train_bn)

        def loss_fn(fast, step):
            out, new = self.forward(meta, state, fast, x_s, step, train_bn, z=z_s)
            return self.model.loss(out, y_s), new

        fast = self.initial(meta, state, support, ways=ways, train_bn=train_bn)
        return inner_loop(
            loss_fn,
            fast,
            self._rates(meta),
            steps=steps,
            first_order=self.opts.first_order,
            remat=self.opts.remat,
            observe=observe,
        )

    def predict(self, meta, state, adapted, x, *, ways: int, steps: int, train_bn: bool):
        """Outputs for `x` of the weights `adapted` (from `adapt`) after `steps` inner steps."""
        del ways  # the adapted head has its width
        return self.forward(meta, state, adapted, x, steps, train_bn)[0]

    def _query_observer(self, meta, state, query, train_bn):
        """`observe` for `adapt`: query loss, metric and BN state after a step."""
        z_q = None
        if self.opts.adapt == "head":  # ANIL: query features (and their BN statistics) once
            z_q, trunk_state = self._embed(meta["params"]["trunk"], state, 0, query["x"], train_bn)

        def observe(fast, step):
            out, new = self.forward(meta, state, fast, query["x"], step, train_bn, z=z_q)
            if z_q is not None:
                new = {"trunk": trunk_state}
            y = query["y"]
            return {
                "loss": self.model.loss(out, y),
                "metric": self.model.metric(out, y),
                "state": new,
            }

        return observe

    # ---- objectives ----------------------------------------------------------------------
    def task_loss(self, meta, state, episode, *, ways: int, msl: jax.Array):
        """Meta-training loss of one episode, with its metrics and BN statistics."""
        o = self.opts
        observe = self._query_observer(meta, state, episode["query"], train_bn=True)
        if o.multi_step_loss:
            fast, trace = self.adapt(
                meta,
                state,
                episode["support"],
                ways=ways,
                steps=o.inner_steps,
                train_bn=True,
                observe=observe,
            )
            seen = trace["observed"]
            loss = jnp.sum(msl * seen["loss"])
            final = jax.tree_util.tree_map(lambda a: a[-1], seen)
        else:
            fast, trace = self.adapt(
                meta, state, episode["support"], ways=ways, steps=o.inner_steps, train_bn=True
            )
            final = observe(fast, o.inner_steps)
            loss = final["loss"]
        metrics = {
            "loss": final["loss"],
            "metric": final["metric"],
            "support_loss": trace["loss"][0],
        }
        return loss, {
            "metrics": metrics,
            "state": self._running_state(state, trace, final["state"]),
        }

    def _running_state(self, state, trace, final_state):
        """BN running statistics after this episode (per step with `per_step_bn`)."""
        if not self.opts.per_step_bn:
            return final_state
        trunk = state["trunk"]
        for i in range(self.opts.inner_steps):
            at_i = jax.tree_util.tree_map(lambda a, i=i: a[i], trace["aux"]["trunk"])
            trunk = mm.set_step(trunk, self.state_mask, i, at_i)
        trunk = mm.set_step(trunk, self.state_mask, self.opts.inner_steps, final_state["trunk"])
        return {"trunk": trunk}

    def meta_grads(self, meta, state, batch, *, ways: int, step: jax.Array):
        """Mean meta-gradient over a meta-batch (leading axis of `batch`), metrics, BN state."""
        msl = msl_weights(self.opts.inner_steps, self.opts.msl_anneal_steps, step)

        def mean_loss(meta):
            losses, aux = jax.vmap(lambda ep: self.task_loss(meta, state, ep, ways=ways, msl=msl))(
                batch
            )
            return jnp.mean(losses), aux

        grads, aux = jax.grad(mean_loss, has_aux=True)(meta)
        return grads, mm.episode_mean(aux)

    def curve(self, meta, state, episode, *, ways: int, steps: int) -> jax.Array:
        """Query metric before adaptation and after each of `steps` inner steps: [steps + 1]."""
        train_bn = self.bn_test == "batch"
        observe = self._query_observer(meta, state, episode["query"], train_bn)
        fast0 = self.initial(meta, state, episode["support"], ways=ways, train_bn=train_bn)
        start = observe(fast0, 0)["metric"]
        _, trace = self.adapt(
            meta,
            state,
            episode["support"],
            ways=ways,
            steps=steps,
            train_bn=train_bn,
            observe=lambda f, i: observe(f, i)["metric"],
        )
        return jnp.concatenate([start[None], trace["observed"]])


def _without(tree: PyTree, mask: PyTree | None) -> PyTree:
    """`tree` with the leaves selected by `mask` replaced by None (they do not adapt)."""
    if mask is None:
        return tree
    return jax.tree_util.tree_map(lambda p, m: None if m else p, tree, mask)


def _fill(partial: PyTree, full: PyTree) -> PyTree:
    """`partial` with its None leaves taken from `full`."""
    return jax.tree_util.tree_map(
        lambda f, p: p if f is None else f, partial, full, is_leaf=lambda x: x is None
    )


def build(model: mm.MetaModel, params: PyTree, state: PyTree, opts: MamlOptions) -> Maml:
    """A `Maml` learner for `model` (made by `mtl.meta.model.build`)."""
    opts.check(model.kind)
    bn_mask = mm.batch_norm_mask(params["trunk"], state["trunk"])
    state_mask = jax.tree_util.tree_map_with_path(
        lambda path, _: mm._key(path[-1]) in ("mean", "var"), state["trunk"]
    )
    lora_mask = jax.tree_util.tree_map_with_path(
        lambda path, _: mm._key(path[-1]) in ("lora_a", "lora_b"), params["trunk"]
    )
    if opts.adapt == "lora" and not any(jax.tree_util.tree_leaves(lora_mask)):
        raise ConfigError(
            "meta.adapt='lora', but no layer of the trunk matches "
            f"meta.lora_targets={opts.lora_targets!r}: name its linear layers or convolutions."
        )
    return Maml(model, opts, bn_mask, state_mask, lora_mask)
