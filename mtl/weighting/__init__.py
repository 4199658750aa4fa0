"""Loss-weighting and gradient-combination methods, picked by name from a config.

    weighting = get_weighting(cfg.weighting.name, cfg.weighting.get(cfg.weighting.name))
    state = initial_state(weighting, num_tasks, shared_params)
    update, state = weighting.update(objective, state, rng)

A new method is a factory with keyword defaults only, returning a `Weighting`, in its own module
here, registered below; `default_config()` picks up its defaults from its signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from mtl.registry import Registry
from mtl.weighting.aligned_mtl import aligned_mtl
from mtl.weighting.base import TaskObjective, Update, Weighting, initial_state
from mtl.weighting.cagrad import cagrad
from mtl.weighting.db_mtl import db_mtl
from mtl.weighting.dwa import dwa
from mtl.weighting.equal import equal
from mtl.weighting.fairgrad import fairgrad
from mtl.weighting.famo import famo
from mtl.weighting.gradnorm import gradnorm
from mtl.weighting.imtl_g import imtl_g
from mtl.weighting.mgda import mgda
from mtl.weighting.nash_mtl import nash_mtl
from mtl.weighting.pcgrad import pcgrad
from mtl.weighting.rlw import rlw
from mtl.weighting.stch import stch
from mtl.weighting.uncertainty import uncertainty
from mtl.weighting.upgrad import upgrad

WEIGHTINGS: Registry[Callable[..., Weighting]] = Registry("weighting")
for _name, _factory in {
    "equal": equal,
    "uncertainty": uncertainty,
    "dwa": dwa,
    "rlw": rlw,
    "gradnorm": gradnorm,
    "famo": famo,
    "stch": stch,
    "db_mtl": db_mtl,
    "pcgrad": pcgrad,
    "mgda": mgda,
    "cagrad": cagrad,
    "nash_mtl": nash_mtl,
    "aligned_mtl": aligned_mtl,
    "imtl_g": imtl_g,
    "upgrad": upgrad,
    "fairgrad": fairgrad,
}.items():
    WEIGHTINGS.register(_name)(_factory)


def get_weighting(name: str, config: Mapping[str, Any] | None = None) -> Weighting:
    """Build the method `name` with keyword options `config` (a dict or `ConfigDict`).

    Raises `ConfigError` for an unknown name (with the closest known one) and for options the
    method does not take or of the wrong type (naming the accepted ones).
    """
    factory = WEIGHTINGS.get(name, field="weighting.name")
    return factory(**WEIGHTINGS.options_from(name, config, field=f"weighting.{name}"))


def default_config() -> ml_collections.ConfigDict:
    """`name="equal"` plus one sub-config per method holding its factory's defaults.

    Override from the command line as `--config.weighting.name=dwa
    --config.weighting.dwa.temperature=3`, then build with
    `get_weighting(cfg.name, cfg.get(cfg.name))`.
    """
    return WEIGHTINGS.default_config("equal")


__all__ = [
    "WEIGHTINGS",
    "TaskObjective",
    "Update",
    "Weighting",
    "aligned_mtl",
    "cagrad",
    "db_mtl",
    "default_config",
    "dwa",
    "equal",
    "fairgrad",
    "famo",
    "get_weighting",
    "gradnorm",
    "imtl_g",
    "initial_state",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "rlw",
    "stch",
    "uncertainty",
    "upgrad",
]
