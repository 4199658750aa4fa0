"""Fine-tuning strategies as parameter groups: which parameters train, how fast, from when.

`config.finetune.strategy` picks one; each becomes a `Plan`: path-regex rules that give every
parameter a group (first match wins, see `mtl.transfer.partition`) and per group a learning-rate
multiplier, a start step, or "frozen" (no updates, no optimizer state):

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
from mtl.errors import ConfigError, unknown_name
from mtl.transfer import lora, partition

STRATEGIES = ("feature_extraction", "full", "llrd", "gradual_unfreezing", "lp_ft", "lora")
FROZEN = "frozen"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            strategy="full",
            head_lr_mult=1.0,  # heads' learning rate / optimizer.learning_rate
            freeze=(),  # regexes of parameters frozen under any strategy
            llrd=dict(decay=0.8),
            gradual_unfreezing=dict(every=100),
            lp_ft=dict(probe_steps=100, trunk_lr_mult=1.0),
            lora=dict(rank=8, alpha=16.0, targets=lora.DEFAULT_TARGETS),
        )
    )


@dataclasses.dataclass(frozen=True)
class Group:
    lr_mult: float = 1.0
    start: int = 0  # first step at which the group trains
    frozen: bool = False


class Plan(NamedTuple):
    rules: list[tuple[str, str]]  # (regex over parameter paths, group), first match wins
    groups: dict[str, Group]


def check(config: Mapping[str, Any], num_steps: int) -> None:
    """`ConfigError` for an unknown strategy or option values that cannot work."""
    strategy = config["strategy"]
    if strategy not in STRATEGIES:
        raise unknown_name("fine-tuning strategy", strategy, STRATEGIES, field="finetune.strategy")
    if strategy == "llrd" and not 0 < config["llrd"]["decay"] <= 1:
        raise ConfigError(f"finetune.llrd.decay must be in (0, 1], got {config['llrd']['decay']}.")
    if strategy == "gradual_unfreezing" and config["gradual_unfreezing"]["every"] < 1:
        raise ConfigError("finetune.gradual_unfreezing.every must be >= 1.")
    if strategy == "lp_ft" and not 0 < config["lp_ft"]["probe_steps"] < num_steps:
        raise ConfigError(
            f"finetune.lp_ft.probe_steps={config['lp_ft']['probe_steps']} must lie in "
            f"(0, num_steps={num_steps}) so that both phases run."
        )
    if strategy == "lora" and (int(config["lora"]["rank"]) < 1 or config["lora"]["alpha"] <= 0):
        raise ConfigError("finetune.lora.rank must be >= 1 and finetune.lora.alpha > 0.")


def num_layers(params: Mapping[str, Any]) -> int:
    """Layers of the trunk (a trunk with a `layers` list, as `bert`)."""
    layers = params["trunk"].get("layers") if isinstance(params["trunk"], Mapping) else None
    if not layers:
        raise ConfigError(
            "finetune strategies llrd and gradual_unfreezing need a trunk with a `layers` list "
            "(such as bert)."
        )
    return len(layers)


def _per_layer(count: int) -> list[tuple[str, str]]:
    """Rules that give the embeddings, each layer and the pooler a group of their own."""
    return (
        [("^trunk/embeddings/", "embeddings")]
        + [(f"^trunk/layers/{i}/", f"layer_{i}") for i in range(count)]
        + [("^trunk/pooler/", "pooler")]
    )


def plan(config: Mapping[str, Any], params: Mapping[str, Any]) -> Plan:
    """The groups of `config.strategy` for `params` (`{"trunk": ..., "heads": ...}`)."""
    strategy = config["strategy"]
    head = Group(config["head_lr_mult"])
    rules = [(pattern, FROZEN) for pattern in config["freeze"]] + [("^heads/", "heads")]
    groups = {FROZEN: Group(frozen=True), "heads": head}
    if strategy == "feature_extraction":
        rules.append(("", FROZEN))
    elif strategy == "full":
        rules.append(("", "trunk"))
        groups["trunk"] = Group()
    elif strategy == "lora":
        rules += [(r"/lora_[ab]$", "lora"), ("", FROZEN)]
        groups["lora"] = Group()
    elif strategy == "lp_ft":
        rules.append(("", "trunk"))
        groups["trunk"] = Group(
            config["lp_ft"]["trunk_lr_mult"], start=config["lp_ft"]["probe_steps"]
        )
    elif strategy in ("llrd", "gradual_unfreezing"):
        count = num_layers(params)
        rules += _per_layer(count)
        # depth 0 = top (pooler), L = lowest layer... embeddings L + 1.
        depth = {"pooler": 0, "embeddings": count + 1} | {
            f"layer_{i}": count - i for i in range(count)
        }
        for name, d in depth.items():
            if strategy == "llrd":
                groups[name] = Group(config["llrd"]["decay"] ** d)
            else:
                groups[name] = Group(start=max(d, 1) * config["gradual_unfreezing"]["every"])
    else:
        raise unknown_name("fine-tuning strategy", strategy, STRATEGIES, field="finetune.strategy")
    return Plan(rules, groups)


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
    """Adds LoRA factors to the trunk when the strategy is `lora`; returns the layers changed."""
    if config["strategy"] != "lora":
        return []
    options = config["lora"]
    return lora.add_lora(
        model.trunk,
        rank=int(options["rank"]),
        alpha=float(options["alpha"]),
        targets=options["targets"],
        rngs=nnx.Rngs(seed + 1),
    )


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
