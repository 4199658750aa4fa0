"""Fine-tuning strategies as parameter groups: which parameters train, how fast, from when.

`config.finetune.strategy` picks one of `STRATEGIES`, a `Registry` whose entries are frozen
dataclasses: their fields and defaults are the strategy's options (`config.finetune.<name>`).
Each becomes a `Plan`: path-regex rules that give every parameter a group (first match wins,
see `mtl.transfer.partition`) and per group a learning-rate multiplier, a start step, or
"frozen" (no updates, no optimizer state):

| strategy             | groups                                                                 |
| -------------------- | ---------------------------------------------------------------------- |
| `feature_extraction` | heads train; the trunk is frozen                                       |
| `full`               | everything trains (heads at `head_lr_mult`)                            |
| `llrd`               | layer-wise lr decay: heads and pooler x1, top layer x decay, layer i   |
|                      | x decay^(L-i), embeddings x decay^(L+1) (ELECTRA / BEiT convention)    |
| `gradual_unfreezing` | ULMFiT: heads from step 0; the top layer (and pooler) from `every`,    |
|                      | layer i from (L-i) * every, embeddings from (L+1) * every              |
| `lp_ft`              | linear probe, then fine-tune (Kumar et al. 2022): heads from step 0,   |
|                      | the trunk from `probe_steps` at `trunk_lr_mult`                        |
| `lora`               | heads and LoRA factors train; every other weight is frozen             |
| `prompt_tuning`      | heads and soft prompt vectors (prepended to the input embeddings of a  |
|                      | bert or decoder trunk) train; every other weight is frozen             |

`finetune.freeze` adds regexes of parameters frozen under any strategy (say
`"^trunk/embeddings/"`). Groups that start late keep their optimizer state still until they
start, so their learning-rate schedule (warm-up, cosine) begins when they do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from mtl import optim
from mtl.errors import ConfigError
from mtl.registry import Registry
from mtl.transfer import lora, partition, prompt

FROZEN = "frozen"
STRATEGIES: Registry = Registry("fine-tuning strategy")

Rules = list[tuple[str, str]]  # (regex over parameter paths, group), first match wins


@dataclasses.dataclass(frozen=True)
class Group:
    lr_mult: float = 1.0
    start: int = 0  # first step at which the group trains
    frozen: bool = False


class Plan(NamedTuple):
    rules: Rules
    groups: dict[str, Group]


class Strategy:
    """A registered strategy: a frozen dataclass whose fields are its `finetune.<name>` options.

    `groups` gives the trunk's rules and groups (the heads' come first, from `plan`); `check`
    and `prepare` are no-ops unless a strategy needs them.
    """

    def check(self, num_steps: int) -> None:
        """A `ConfigError` for option values that cannot work over `num_steps` steps."""

    def groups(self, params: Mapping[str, Any]) -> tuple[Rules, dict[str, Group]]:
        raise NotImplementedError

    def prepare(self, model: nnx.Module, seed: int) -> list[str]:
        """Changes `model` before training (LoRA adds its factors); the layers changed."""
        del model, seed
        return []

    def initialize(self, trunk_params: Mapping[str, Any], seed: int) -> Mapping[str, Any]:
        """The trunk's parameters on a fresh start, after any pretrained restore."""
        del seed
        return trunk_params


@STRATEGIES.register("feature_extraction")
@dataclasses.dataclass(frozen=True)
class FeatureExtraction(Strategy):
    """Heads train; the trunk is frozen."""

    def groups(self, params):
        return [("", FROZEN)], {}


@STRATEGIES.register("full")
@dataclasses.dataclass(frozen=True)
class Full(Strategy):
    """Everything trains."""

    def groups(self, params):
        return [("", "trunk")], {"trunk": Group()}


@STRATEGIES.register("llrd")
@dataclasses.dataclass(frozen=True)
class LayerwiseLrDecay(Strategy):
    """Layer-wise learning-rate decay: a layer at depth d (top = 0) trains at decay^d."""

    decay: float = 0.8

    def check(self, num_steps):
        if not 0 < self.decay <= 1:
            raise ConfigError(f"finetune.llrd.decay must be in (0, 1], got {self.decay}.")

    def groups(self, params):
        rules, depth = _per_layer(params)
        return rules, {name: Group(self.decay**d) for name, d in depth.items()}


@STRATEGIES.register("gradual_unfreezing")
@dataclasses.dataclass(frozen=True)
class GradualUnfreezing(Strategy):
    """ULMFiT: a layer at depth d (top = 0) starts training at step max(d, 1) * every."""

    every: int = 100

    def check(self, num_steps):
        if self.every < 1:
            raise ConfigError("finetune.gradual_unfreezing.every must be >= 1.")

    def groups(self, params):
        rules, depth = _per_layer(params)
        return rules, {name: Group(start=max(d, 1) * self.every) for name, d in depth.items()}


@STRATEGIES.register("lp_ft")
@dataclasses.dataclass(frozen=True)
class LinearProbeThenFineTune(Strategy):
    """Heads from step 0; the trunk from `probe_steps` at `trunk_lr_mult`."""

    probe_steps: int = 100
    trunk_lr_mult: float = 1.0

    def check(self, num_steps):
        if not 0 < self.probe_steps < num_steps:
            raise ConfigError(
                f"finetune.lp_ft.probe_steps={self.probe_steps} must lie in "
                f"(0, num_steps={num_steps}) so that both phases run."
            )

    def groups(self, params):
        return [("", "trunk")], {"trunk": Group(self.trunk_lr_mult, start=self.probe_steps)}


@STRATEGIES.register("lora")
@dataclasses.dataclass(frozen=True)
class LoRA(Strategy):
    """Heads and LoRA factors train; every other weight is frozen."""

    rank: int = 8
    alpha: float = 16.0
    targets: str = lora.DEFAULT_TARGETS

    def check(self, num_steps):
        if int(self.rank) < 1 or self.alpha <= 0:
            raise ConfigError("finetune.lora.rank must be >= 1 and finetune.lora.alpha > 0.")

    def groups(self, params):
        return [(r"/lora_[ab]$", "lora"), ("", FROZEN)], {"lora": Group()}

    def prepare(self, model, seed):
        return lora.add_lora(
            model.trunk,
            rank=int(self.rank),
            alpha=float(self.alpha),
            targets=self.targets,
            rngs=nnx.Rngs(seed + 1),
        )


@STRATEGIES.register("prompt_tuning")
@dataclasses.dataclass(frozen=True)
class PromptTuning(Strategy):
    """Heads and `length` soft prompt vectors train; the trunk is frozen (mtl.transfer.prompt)."""

    length: int = 20
    init: str = "vocab"  # vocab | random

    def check(self, num_steps):
        if int(self.length) < 1 or self.init not in prompt.INITS:
            raise ConfigError(
                "finetune.prompt_tuning.length must be >= 1 and finetune.prompt_tuning.init one "
                f"of {', '.join(prompt.INITS)}."
            )

    def groups(self, params):
        return [(r"^trunk/prompt/", "prompt"), ("", FROZEN)], {"prompt": Group()}

    def prepare(self, model, seed):
        return prompt.add_prompt(
            model.trunk, length=int(self.length), init=self.init, rngs=nnx.Rngs(seed + 1)
        )

    def initialize(self, trunk_params, seed):
        if self.init != "vocab":
            return trunk_params
        return prompt.init_from_vocabulary(trunk_params, seed + 1)


def default_config() -> ml_collections.ConfigDict:
    """`strategy`, the options of every strategy, and one block per strategy that has options
    (its dataclass fields and their defaults)."""
    block: dict[str, Any] = dict(
        strategy="full",
        head_lr_mult=1.0,  # heads' learning rate / optimizer.learning_rate
        freeze=(),  # regexes of parameters frozen under any strategy
    )
    for name in STRATEGIES:
        if options := STRATEGIES.options(name):
            block[name] = options
    return ml_collections.ConfigDict(block)


def strategy(config: Mapping[str, Any]) -> Strategy:
    """The strategy named by `config.strategy` with its options from `config.<strategy>`.

    A `ConfigError` names an unknown strategy, or an option it does not take or of the wrong
    type.
    """
    name = config["strategy"]
    factory = STRATEGIES.get(name, field="finetune.strategy")
    options = STRATEGIES.options_from(name, config.get(name), field=f"finetune.{name}")
    return factory(**options)


def check(config: Mapping[str, Any], num_steps: int) -> None:
    """`ConfigError` for an unknown strategy or option values that cannot work."""
    strategy(config).check(num_steps)


def num_layers(params: Mapping[str, Any]) -> int:
    """Layers of the trunk (a trunk with a `layers` list, as `bert`)."""
    layers = params["trunk"].get("layers") if isinstance(params["trunk"], Mapping) else None
    if not layers:
        raise ConfigError(
            "finetune strategies llrd and gradual_unfreezing need a trunk with a `layers` list "
            "(such as bert)."
        )
    return len(layers)


def _per_layer(params: Mapping[str, Any]) -> tuple[Rules, dict[str, int]]:
    """Rules that give the embeddings, each layer and the pooler a group of their own, and each
    group's depth: 0 = top (pooler), L - i for layer i, L + 1 for the embeddings."""
    count = num_layers(params)
    rules = (
        [("^trunk/embeddings/", "embeddings")]
        + [(f"^trunk/layers/{i}/", f"layer_{i}") for i in range(count)]
        # The top: a pooler, a final norm (pre-norm transformers), an untied LM head.
        + [("^trunk/(pooler|norm|lm_head)/", "pooler")]
    )
    depth = {"pooler": 0, "embeddings": count + 1} | {f"layer_{i}": count - i for i in range(count)}
    return rules, depth


def plan(config: Mapping[str, Any], params: Mapping[str, Any]) -> Plan:
    """The groups of `config.strategy` for `params` (`{"trunk": ..., "heads": ...}`)."""
    rules = [(pattern, FROZEN) for pattern in config["freeze"]] + [("^heads/", "heads")]
    groups = {FROZEN: Group(frozen=True), "heads": Group(config["head_lr_mult"])}
    trunk_rules, trunk_groups = strategy(config).groups(params)
    return Plan(rules + trunk_rules, groups | trunk_groups)


def make_optimizer(
    plan_: Plan, optimizer_config: Mapping[str, Any], num_steps: int
) -> optax.GradientTransformation:
    """Clipping over the trainable gradients, then one optimizer per group of `plan_`."""
    base = dict(optimizer_config)
    clip = base.get("grad_clip_norm") or 0.0
    base["grad_clip_norm"] = 0.0  # clipped once, over all groups, below
    transforms: dict[str, optax.GradientTransformation | None] = {}
    for name, group in plan_.groups.items():
        if group.frozen:
            transforms[name] = None
            continue
        config = base | {"learning_rate": base["learning_rate"] * group.lr_mult}
        inner = optim.make_optimizer(config, max(num_steps - group.start, 1))
        transforms[name] = partition.gated(inner, group.start)
    tx = partition.partitioned(plan_.rules, transforms)
    return optax.chain(clip_trainable(plan_, clip), tx) if clip else tx


def clip_trainable(plan_: Plan, max_norm: float) -> optax.GradientTransformation:
    """Global-norm clipping over the groups that train at this step (frozen and not-yet-started
    groups neither count in the norm nor matter: their updates are dropped after)."""

    def init(params):
        del params
        return {"count": jnp.zeros((), jnp.int32)}

    def update(updates, state, params=None):
        del params
        labels = partition.label_params(updates, plan_.rules)
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        squares = []
        for leaf, name in zip(leaves, jax.tree_util.tree_leaves(labels), strict=True):
            group = plan_.groups[name]
            if not group.frozen:
                active = (state["count"] >= group.start).astype(leaf.dtype)
                squares.append(active * jnp.sum(jnp.square(leaf)))
        norm = jnp.sqrt(sum(squares)) if squares else jnp.zeros(())
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
        clipped = jax.tree_util.tree_unflatten(treedef, [leaf * scale for leaf in leaves])
        return clipped, {"count": state["count"] + 1}

    return optax.GradientTransformation(init, update)


def prepare_model(model: nnx.Module, config: Mapping[str, Any], seed: int) -> list[str]:
    """Adds LoRA factors (`lora`) or a soft prompt (`prompt_tuning`) to the trunk; returns the
    layers added or changed."""
    return strategy(config).prepare(model, seed)


def summary(plan_: Plan, params: Mapping[str, Any]) -> dict[str, Any]:
    """Trainable and total parameter counts, and each group's size, multiplier and start."""
    counts = partition.count_by_group(params, plan_.rules)
    trainable = sum(n for g, n in counts.items() if not plan_.groups[g].frozen)
    return {
        "trainable": trainable,
        "total": sum(counts.values()),
        "groups": {
            g: {"params": n, **dataclasses.asdict(plan_.groups[g])}
            for g, n in sorted(counts.items())
        },
    }
