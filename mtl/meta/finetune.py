"""Few-shot baselines that fine-tune on the support set, and P>M>F, through the learner API.

One learner, `FineTune`, adapts a (pretrained or meta-trained) trunk to a support set with
`steps` Adam steps, and covers the baselines rapid-adaptation papers compare against:

- `finetune` (`finetune_adapt="head"`): a logistic-regression probe on frozen features;
- `finetune`, `finetune_head="cosine"`: Baseline++ (Chen et al. 2019), a cosine classifier
  on frozen features;
- `finetune`, `finetune_adapt="all"` or `"lora"` (with `meta.lora_rank`): full or LoRA
  fine-tuning of the trunk with a linear head;
- `setfit` (Tunstall et al. 2022): first `setfit_steps` of contrastive fine-tuning of the
  trunk on every pair of support examples (their cosine similarity pulled to 1 for a pair of
  one class, 0 otherwise), then the probe on the new features;
- `pmf` (P>M>F, Hu et al. 2022): ProtoNets meta-training, then at test time the whole trunk
  fine-tuned on the support set with the ProtoNet loss, the support set as its own queries
  (the paper adds data augmentation to them; there is none here).

`finetune` and `setfit` are not meta-trained (`num_steps=0`: the run evaluates the pretrained
trunk of `init.checkpoint`); `pmf` meta-trains as ProtoNets. The nearest-prototype baseline is
`protonets` with `num_steps=0`. With several rates in `finetune_lrs` / `pmf_lrs`, the run
picks the one with the best meta-validation accuracy before meta-testing and records it in
results.json, where `load_learner` reads it.
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
from mtl.meta.protonets import ProtoNet, ProtoNetOptions, proto_logits
from mtl.transfer.lora import DEFAULT_TARGETS

PyTree = Any

ADAPT = ("head", "lora", "all")
HEADS = ("linear", "cosine", "prototype")


def _only(tx: optax.GradientTransformation, mask: PyTree) -> optax.GradientTransformation:
    """`tx` on the leaves where `mask` is True, no update elsewhere (`optax.masked` alone
    would pass the raw gradients of the other leaves through as updates)."""
    labels = jax.tree.map(lambda m: "train" if m else "freeze", mask)
    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def cosine_logits(z: jax.Array, weights: jax.Array, scale: float) -> jax.Array:
    """Baseline++'s logits: `scale * cos(z, w_c)` for class weight vectors `weights` [d, ways]."""
    zn = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)
    wn = weights / (jnp.linalg.norm(weights, axis=0, keepdims=True) + 1e-8)
    return scale * zn @ wn


def pair_similarity_loss(z: jax.Array, y: jax.Array) -> jax.Array:
    """SetFit's loss over every pair of support examples: (cos(z_i, z_j) - [y_i == y_j])²."""
    zn = z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)
    cosine = zn @ zn.T
    same = (y[:, None] == y[None, :]).astype(z.dtype)
    upper = jnp.triu(jnp.ones_like(cosine), k=1)  # each pair once, no self-pairs
    return jnp.sum(upper * jnp.square(cosine - same)) / jnp.sum(upper)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `FineTune` does with a support set, resolved from a method's options."""

    adapt: str = "head"  # head (probe) | lora | all
    head: str = "linear"  # linear | cosine (Baseline++) | prototype (P>M>F)
    lr: float = 1e-2
    lrs: tuple[float, ...] = ()  # candidates chosen on meta-val (empty: lr)
    weight_decay: float = 0.0
    cosine_scale: float = 10.0
    setfit_steps: int = 0  # > 0: SetFit's contrastive stage first
    setfit_lr: float = 1e-4

    def check(self) -> None:
        check_choice("finetune_adapt", self.adapt, ADAPT)
        check_choice("finetune_head", self.head, HEADS)
        if self.head == "prototype" and self.adapt == "head":
            raise ConfigError(
                "meta.finetune_head='prototype' has no weights: fine-tune the trunk "
                "(meta.finetune_adapt='all' or 'lora')."
            )
        if any(r < 0 for r in (self.lr, self.setfit_lr, *self.lrs)) or self.setfit_steps < 0:
            raise ConfigError("The fine-tuning rates and setfit_steps must be >= 0.")


@dataclasses.dataclass(frozen=True)
class _Options:
    """Fields every fine-tuning method shares (their defaults agree across methods)."""

    finetune_weight_decay: float = 0.0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = DEFAULT_TARGETS
    bn_test: str = "running"

    head_per_episode: ClassVar[bool] = True
    meta_trains: ClassVar[bool] = False  # `num_steps` must be 0

    def plan(self) -> Plan:
        raise NotImplementedError

    def num_outputs(self, kind: str, ways: int) -> None:
        return None  # heads are built per episode

    def lora(self) -> tuple[int, float, str] | None:
        return (self.lora_rank, self.lora_alpha, self.lora_targets) if self.lora_rank else None

    def check(self, kind: str, head_hidden: Sequence[int] = ()) -> None:
        del head_hidden
        if kind != "classification":
            raise ConfigError("The fine-tuning baselines need classification episodes.")
        check_choice("bn_test", self.bn_test, BN_TEST)
        plan = self.plan()
        plan.check()
        if (plan.adapt == "lora") != (self.lora_rank > 0):
            raise ConfigError(
                "meta.finetune_adapt='lora' trains the trunk's LoRA factors: set "
                f"meta.lora_rank > 0 with it (and only with it); got lora_rank={self.lora_rank}."
            )

    def build(self, model: mm.MetaModel, params: PyTree, state: PyTree) -> FineTune:
        self.check(model.kind)
        return FineTune(model, self.plan(), self.bn_test)


@dataclasses.dataclass(frozen=True)
class FineTuneOptions(_Options):
    """`finetune`: the probe, Baseline++, full and LoRA fine-tuning on the support set."""

    finetune_adapt: str = "head"  # head (probe) | lora | all
    finetune_head: str = "linear"  # linear | cosine (Baseline++)
    finetune_lr: float = 1e-2
    finetune_lrs: tuple[float, ...] = ()
    cosine_scale: float = 10.0

    def plan(self) -> Plan:
        return Plan(self.finetune_adapt, self.finetune_head, self.finetune_lr,
                    tuple(self.finetune_lrs), self.finetune_weight_decay,
                    self.cosine_scale)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class SetFitOptions(_Options):
    """`setfit`: `setfit_steps` contrastive steps on the trunk, then a probe (`finetune_lr`)."""

    setfit_steps: int = 20
    setfit_lr: float = 1e-4
    finetune_lr: float = 1e-2

    def plan(self) -> Plan:
        adapt = "lora" if self.lora_rank else "head"
        return Plan(adapt, "linear", self.finetune_lr, (), self.finetune_weight_decay,
                    setfit_steps=self.setfit_steps, setfit_lr=self.setfit_lr)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PmfOptions(_Options):
    """`pmf`: meta-trained as ProtoNets; at test time the whole trunk is fine-tuned with the
    ProtoNet loss at the rate of `pmf_lrs` that scores best on meta-val."""

    pmf_lrs: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)

    meta_trains: ClassVar[bool] = True

    def plan(self) -> Plan:
        lrs = tuple(self.pmf_lrs)
        return Plan("all", "prototype", lrs[0] if lrs else 0.0, lrs, self.finetune_weight_decay)

    def check(self, kind: str, head_hidden: Sequence[int] = ()) -> None:
        super().check(kind, head_hidden)
        if not self.pmf_lrs:
            raise ConfigError("meta.pmf_lrs must list at least one fine-tuning rate.")

    def build(self, model: mm.MetaModel, params: PyTree, state: PyTree) -> FineTune:
        self.check(model.kind)
        protonet = ProtoNetOptions(bn_test=self.bn_test).build(model, params, state)
        return FineTune(model, self.plan(), self.bn_test, protonet)


@dataclasses.dataclass(frozen=True)
class FineTune:
    """Meta-parameters `{"params": {"trunk"}}`; `adapt` returns `{"trunk", "head", "support"}`."""

    model: mm.MetaModel
    plan: Plan
    bn_test: str = "running"
    protonet: ProtoNet | None = None  # P>M>F's meta-training

    min_adapt_steps: ClassVar[int] = 0
    head_per_episode: ClassVar[bool] = True

    def init(self, params: PyTree, state: PyTree) -> tuple[PyTree, PyTree]:
        return {"params": {"trunk": params["trunk"]}}, state

    def meta_grads(self, meta, state, batch, *, ways: int, step: jax.Array):
        if self.protonet is None:
            raise ConfigError(
                "The fine-tuning baselines are not meta-trained: set --config.num_steps=0."
            )
        return self.protonet.meta_grads(meta, state, batch, ways=ways, step=step)

    # ---- the pieces -----------------------------------------------------------------------
    def _trainable_mask(self, trunk: PyTree) -> PyTree:
        """True at the trunk leaves the support set trains."""
        adapt = self.plan.adapt
        return jax.tree_util.tree_map_with_path(
            lambda path, _: (
                adapt == "all" or (adapt == "lora" and mm._key(path[-1]) in ("lora_a", "lora_b"))
            ),
            trunk,
        )

    def _embed(self, trunk, state, x, train_bn):
        return self.model.embed({"trunk": trunk}, state, x, train=train_bn)[0]

    def _logits(self, head, z, support_z, support_y, ways):
        kind = self.plan.head
        if kind == "prototype":
            return proto_logits(support_z, support_y, z, ways)
        if kind == "cosine":
            return cosine_logits(z, head["weights"], self.plan.cosine_scale)
        return z @ head["kernel"] + head["bias"]

    def _initial_head(self, z, y, ways):
        if self.plan.head == "cosine":  # class means: Baseline++'s natural start
            return {"weights": mm.class_means(z, y, ways).T}
        return {"kernel": jnp.zeros((z.shape[-1], ways)), "bias": jnp.zeros((ways,))}

    def _optimizer(self, lr: float) -> optax.GradientTransformation:
        return optax.adamw(lr, weight_decay=self.plan.weight_decay)

    def _setfit(self, trunk, state, support, train_bn):
        """SetFit's first stage: the trunk trained so that pairs of one class embed alike."""
        mask = self._trainable_mask(trunk) if self.plan.adapt != "head" else None
        if mask is None:  # the probe variant still fine-tunes the whole trunk here
            mask = jax.tree.map(lambda _: True, trunk)
        tx = _only(optax.adam(self.plan.setfit_lr), mask)

        def loss(t):
            return pair_similarity_loss(self._embed(t, state, support["x"], train_bn), support["y"])

        def step(carry, _):
            t, opt = carry
            grads = jax.grad(loss)(t)
            updates, opt = tx.update(grads, opt, t)
            return (optax.apply_updates(t, updates), opt), None

        (trunk, _), _ = jax.lax.scan(step, (trunk, tx.init(trunk)), None, self.plan.setfit_steps)
        return trunk

    # ---- adapt / predict ---------------------------------------------------------------------
    def adapt(self, meta, state, support, *, ways: int, steps: int, train_bn: bool, observe=None):
        """`(adapted, trace)`: `steps` Adam steps on the support loss; `observe(adapted, i)`
        after each (the adaptation curve)."""
        o = self.plan
        trunk = meta["params"]["trunk"]
        if o.setfit_steps:
            trunk = self._setfit(trunk, state, support, train_bn)
        x, y = support["x"], support["y"]
        frozen_z = self._embed(trunk, state, x, train_bn)
        head = self._initial_head(frozen_z, y, ways)
        tunes_trunk = o.adapt != "head"
        mask = {"trunk": self._trainable_mask(trunk), "head": jax.tree.map(lambda _: True, head)}
        tx = _only(self._optimizer(o.lr), mask)
        # The support set sits in `adapted`: prototypes (P>M>F) are made from it at predict.
        adapted = {"trunk": trunk, "head": head, "support": support}

        def loss(weights):
            z = self._embed(weights["trunk"], state, x, train_bn) if tunes_trunk else frozen_z
            logits = self._logits(weights["head"], z, z, y, ways)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

        def step(carry, i):
            weights, opt = carry
            value, grads = jax.value_and_grad(loss)(weights)
            updates, opt = tx.update(grads, opt, weights)
            weights = optax.apply_updates(weights, updates)
            seen = {"loss": value}
            if observe is not None:
                seen["observed"] = observe({**adapted, **weights}, i + 1)
            return (weights, opt), seen

        if steps == 0:
            return adapted, {}
        weights = {"trunk": trunk, "head": head}
        (weights, _), trace = jax.lax.scan(
            step, (weights, tx.init(weights)), jnp.arange(steps, dtype=jnp.int32)
        )
        return {**adapted, **weights}, trace

    def predict(self, meta, state, adapted, x, *, ways: int, steps: int, train_bn: bool):
        del meta, steps
        z = self._embed(adapted["trunk"], state, x, train_bn)
        support_z = None
        if self.plan.head == "prototype":
            support_z = self._embed(adapted["trunk"], state, adapted["support"]["x"], train_bn)
        return self._logits(adapted["head"], z, support_z, adapted["support"]["y"], ways)

    def curve(self, meta, state, episode, *, ways: int, steps: int) -> jax.Array:
        """Query accuracy before fine-tuning and after each of `steps` steps."""
        train_bn = self.bn_test == "batch"
        query = episode["query"]

        def metric(adapted, _step):
            logits = self.predict(meta, state, adapted, query["x"], ways=ways, steps=0,
                                  train_bn=train_bn)  # fmt: skip
            return jnp.mean((jnp.argmax(logits, -1) == query["y"]).astype(jnp.float32))

        start, _ = self.adapt(meta, state, episode["support"], ways=ways, steps=0,
                              train_bn=train_bn)  # fmt: skip
        if steps == 0:
            return metric(start, 0)[None]
        _, trace = self.adapt(meta, state, episode["support"], ways=ways, steps=steps,
                              train_bn=train_bn, observe=metric)  # fmt: skip
        return jnp.concatenate([metric(start, 0)[None], trace["observed"]])

    def with_lr(self, lr: float) -> FineTune:
        """The same learner fine-tuning at rate `lr` (for the choice on meta-val)."""
        return dataclasses.replace(self, plan=dataclasses.replace(self.plan, lr=lr))
