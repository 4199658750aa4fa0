"""Optimizers and learning-rate schedules from the `config.optimizer` block."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
import optax

from mtl.errors import ConfigError

_OPTIMIZERS = {
    "adam": lambda lr, wd: optax.adam(lr) if not wd else optax.adamw(lr, weight_decay=wd),
    "adamw": lambda lr, wd: optax.adamw(lr, weight_decay=wd),
    "sgd": lambda lr, wd: optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr)),
    "momentum": lambda lr, wd: optax.chain(
        optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9)
    ),
}


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="adam",
            learning_rate=1e-3,
            schedule="constant",  # constant | cosine | warmup_cosine
            warmup_steps=0,
            weight_decay=0.0,
            grad_clip_norm=0.0,  # 0 turns clipping off
        )
    )


def make_schedule(config: Mapping[str, Any], num_steps: int) -> optax.Schedule:
    lr, kind, warmup = config["learning_rate"], config["schedule"], config["warmup_steps"]
    if kind == "constant":
        return optax.constant_schedule(lr)
    if kind == "cosine":
        return optax.cosine_decay_schedule(lr, max(num_steps, 1))
    if kind == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1))
    raise ConfigError(
        f"Unknown schedule {kind!r} (config optimizer.schedule). Known: constant, cosine, "
        "warmup_cosine."
    )


def make_optimizer(config: Mapping[str, Any], num_steps: int) -> optax.GradientTransformation:
    """The optimizer named by `config.name` with the schedule and clipping of the block."""
    name = config["name"]
    if name not in _OPTIMIZERS:
        from mtl.errors import unknown_name

        raise unknown_name("optimizer", name, _OPTIMIZERS, field="optimizer.name")
    tx = _OPTIMIZERS[name](make_schedule(config, num_steps), config["weight_decay"])
    if config["grad_clip_norm"]:
        tx = optax.chain(optax.clip_by_global_norm(config["grad_clip_norm"]), tx)
    return tx
