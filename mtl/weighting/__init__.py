"""Loss-weighting and gradient-combination methods, picked by name from a config.

    weighting = get_weighting(cfg.weighting.name, cfg.weighting.get(cfg.weighting.name))
    state = weighting.init(num_tasks)
    update, state = weighting.update(objective, state, rng)

A new method is a factory with keyword defaults only, returning a `Weighting`, in its own module
here, registered below; `default_config()` picks up its defaults from its signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from mtl.errors import ConfigError
from mtl.registry import Registry
from mtl.weighting.base import TaskObjective, Update, Weighting
from mtl.weighting.dwa import dwa
from mtl.weighting.equal import equal
from mtl.weighting.famo import famo
from mtl.weighting.gradnorm import gradnorm
from mtl.weighting.rlw import rlw
from mtl.weighting.uncertainty import uncertainty

WEIGHTINGS: Registry[Callable[..., Weighting]] = Registry("weighting")
for _name, _factory in {
    "equal": equal,
    "uncertainty": uncertainty,
    "dwa": dwa,
    "rlw": rlw,
    "gradnorm": gradnorm,
    "famo": famo,
}.items():
    WEIGHTINGS.register(_name)(_factory)


def _defaults(factory: Callable[..., Weighting]) -> dict[str, Any]:
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()}


def _checked(name: str, key: str, value: Any, default: Any) -> Any:
    """`value` if it has the type of `default` (an int is accepted for a float), else raise."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = default is None or isinstance(value, type(default))
    if not ok:
        raise ConfigError(
            f"weighting {name!r}: option {key!r} must be a {type(default).__name__}, "
            f"got {value!r} ({type(value).__name__})."
        )
    return value


def get_weighting(name: str, config: Mapping[str, Any] | None = None) -> Weighting:
    """Build the method `name` with keyword options `config` (a dict or `ConfigDict`).

    Raises `ConfigError` for an unknown name (with the closest known one) and for options the
    method does not take or of the wrong type (naming the accepted ones).
    """
    factory = WEIGHTINGS.get(name, field="weighting.name")
    if config is None:
        options = {}
    elif isinstance(config, ml_collections.ConfigDict):
        options = config.to_dict()
    else:
        options = dict(config)
    defaults = _defaults(factory)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
        raise ConfigError(
            f"weighting {name!r} has no option(s) {', '.join(map(repr, unknown))}. "
            f"Accepted (with defaults): {accepted}."
        )
    options = {k: _checked(name, k, v, defaults[k]) for k, v in options.items()}
    return factory(**options)


def default_config() -> ml_collections.ConfigDict:
    """`name="equal"` plus one sub-config per method holding its factory's defaults.

    Override from the command line as `--config.weighting.name=dwa
    --config.weighting.dwa.temperature=3`, then build with
    `get_weighting(cfg.name, cfg.get(cfg.name))`.
    """
    config = ml_collections.ConfigDict()
    config.name = "equal"
    for name in WEIGHTINGS:
        config[name] = _defaults(WEIGHTINGS.get(name))
    return config


__all__ = [
    "WEIGHTINGS",
    "TaskObjective",
    "Update",
    "Weighting",
    "default_config",
    "dwa",
    "equal",
    "famo",
    "get_weighting",
    "gradnorm",
    "rlw",
    "uncertainty",
]
