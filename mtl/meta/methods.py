"""Meta-learners by name: `config.meta.method` picks one of `METHODS`.

Each entry of `METHODS` is a method's options dataclass (`mtl.meta.protocol.MethodOptions`):
its fields and their defaults are the `config.meta` options the method reads, in one place.
It builds a learner with the interface of `mtl.meta.protocol.MetaLearner`, so the train loop,
the evaluation and the adapt/predict API do not care which one they run:

    init(params, state) -> (meta_params, state)
    meta_grads(meta, state, batch, *, ways, step) -> (grads like meta, {"metrics", "state"})
    curve(meta, state, episode, *, ways, steps) -> query metric after 0..steps inner steps
    adapt(meta, state, support, *, ways, steps, train_bn) -> (adapted, trace)
    predict(meta, state, adapted, x, *, ways, steps, train_bn) -> outputs

`config.meta` is one flat block: the episode fields (`method`, `ways`, `shots`, `queries`,
`meta_batch`) and the options of the method; each method reads only its own fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtl.meta import model as mm
from mtl.meta.finetune import FineTuneOptions, PmfOptions, SetFitOptions
from mtl.meta.imaml import IMamlOptions
from mtl.meta.maml import MamlOptions
from mtl.meta.protocol import MetaLearner, MethodOptions
from mtl.meta.protonets import ProtoNetOptions
from mtl.meta.r2d2 import R2D2Options
from mtl.meta.reptile import ReptileOptions
from mtl.registry import Registry

METHODS: Registry[type[MethodOptions]] = Registry("meta-learning method")
METHODS.register("maml")(MamlOptions)
METHODS.register("reptile")(ReptileOptions)
METHODS.register("protonets")(ProtoNetOptions)
METHODS.register("imaml")(IMamlOptions)
METHODS.register("r2d2")(R2D2Options)
METHODS.register("finetune")(FineTuneOptions)
METHODS.register("setfit")(SetFitOptions)
METHODS.register("pmf")(PmfOptions)


def meta_trains(meta_config: Mapping[str, Any]) -> bool:
    """Whether the method learns anything from meta-training episodes (the fine-tuning
    baselines do not: they adapt the pretrained trunk to each support set)."""
    return getattr(options(meta_config), "meta_trains", True)


def all_defaults() -> dict[str, Any]:
    """Every method's `config.meta` options with their defaults, MAML's first where two
    methods share a field: what a config's meta block holds so any method can be chosen
    from the command line."""
    merged: dict[str, Any] = {}
    for name in ("maml", *METHODS):
        for field, value in METHODS.options(name).items():
            merged.setdefault(field, value)
    return merged


def defaults(name: str) -> dict[str, Any]:
    """The `config.meta` options of method `name` with their defaults."""
    return METHODS.options(name)


def options(meta_config: Mapping[str, Any]) -> MethodOptions:
    """The options of the method named by `meta_config.method`, from its fields of the block.

    A `ConfigError` names an unknown method or an option of the wrong type.
    """
    name = meta_config["method"]
    factory = METHODS.get(name, field="meta.method")
    accepted = METHODS.options(name)
    given = {k: v for k, v in dict(meta_config).items() if k in accepted}
    return factory(**METHODS.options_from(name, given, field="meta"))


def check_method(meta_config: Mapping[str, Any], kind: str, head_hidden: Sequence[int] = ()) -> str:
    """The method name after checking the `config.meta` options it reads."""
    options(meta_config).check(kind, tuple(head_hidden or ()))
    return meta_config["method"]


def num_outputs(meta_config: Mapping[str, Any], kind: str) -> int | None:
    """Width of the head the model needs: none for ProtoNets, 1 for regression, else ways."""
    return options(meta_config).num_outputs(kind, int(meta_config["ways"]))


def lora(meta_config: Mapping[str, Any]) -> tuple[int, float, str] | None:
    """`(rank, alpha, targets)` of the LoRA factors the method's trunk needs, or None."""
    wants = getattr(options(meta_config), "lora", None)
    return wants() if wants is not None else None


def head_per_episode(meta_config: Mapping[str, Any]) -> bool:
    """Whether the learner builds its head per episode, so that any number of ways works."""
    return options(meta_config).head_per_episode


def build(meta_config: Mapping[str, Any], model: mm.MetaModel, params, state) -> MetaLearner:
    """The learner named by `meta_config.method` (call `check_method` first)."""
    return options(meta_config).build(model, params, state)
