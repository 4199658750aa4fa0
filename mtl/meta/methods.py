"""Meta-learners by name: `config.meta.method` picks one of `METHODS`.

Every learner has the same small interface, so the train loop, the evaluation and the
adapt/predict API do not care which one they run:

    init(params, state) -> (meta_params, state)
    meta_grads(meta, state, batch, *, ways, step) -> (grads like meta, {"metrics", "state"})
    curve(meta, state, episode, *, ways, steps) -> query metric after 0..steps inner steps
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mtl.errors import ConfigError, unknown_name
from mtl.meta import maml
from mtl.meta import model as mm
from mtl.meta.protonets import ProtoNet
from mtl.meta.reptile import Reptile

METHODS = ("maml", "reptile", "protonets")


def check_method(meta_config: Mapping[str, Any], kind: str, head_hidden=()) -> str:
    """The method name after checking the `config.meta` options it reads."""
    name = meta_config["method"]
    if name not in METHODS:
        raise unknown_name("meta-learning method", name, METHODS, field="meta.method")
    if name == "protonets":
        if kind != "classification":
            raise ConfigError("meta.method='protonets' needs classification episodes.")
        if meta_config.get("bn_test", "running") not in maml.BN_TEST:
            raise ConfigError(f"meta.bn_test must be one of {', '.join(maml.BN_TEST)}.")
    else:
        opts = maml.options_from(meta_config)
        opts.check(kind, head_hidden)
        if name == "reptile":
            Reptile(maml.Maml(None, opts, None, None)).check()
    return name


def num_outputs(meta_config: Mapping[str, Any], kind: str) -> int | None:
    """Width of the head the model needs: none for ProtoNets, 1 for regression, else ways."""
    if meta_config["method"] == "protonets":
        return None
    return 1 if kind == "regression" else int(meta_config["ways"])


def build(meta_config: Mapping[str, Any], model: mm.MetaModel, params, state):
    """The learner named by `meta_config.method` (call `check_method` first)."""
    name = meta_config["method"]
    if name == "protonets":
        learner = ProtoNet(model, meta_config.get("bn_test", "running"))
        learner.check()
        return learner
    learner = maml.build(model, params, state, maml.options_from(meta_config))
    return Reptile(learner) if name == "reptile" else learner
