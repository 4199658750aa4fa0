"""The optional fine-tuning stage of a supervised run (a config with a `finetune` section):

- the trunk starts from a checkpoint (`init.checkpoint`: a converted model or a run's workdir;
  `mtl.transfer.restore`) on a fresh start, never on resume; heads start fresh;
- LoRA factors are added when the strategy is `lora`;
- the optimizer follows the strategy's plan (`mtl.transfer.strategies`): frozen parameters get
  no updates and no optimizer state;
- the tokenizer is copied into the workdir, so a later run can start from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax
from absl import logging
from flax import nnx

from mtl.data import text
from mtl.models.multitask import MultiTaskModel
from mtl.train.state import TrainState
from mtl.transfer import restore, strategies

GUARDED = ("finetune", "init")


def enabled(config: ml_collections.ConfigDict) -> bool:
    return "finetune" in config


def check(config: ml_collections.ConfigDict) -> restore.TrunkSource | None:
    """Checks the strategy and the init checkpoint against the config; text data reads the
    checkpoint's tokenizer unless set. Returns where the trunk's weights are, if anywhere."""
    text.default_tokenizer_dir(config.data, config.init.checkpoint)
    strategies.check(config.finetune, config.num_steps)
    if not config.init.checkpoint:
        return None
    source = restore.find_source(config.init.checkpoint)
    restore.check_architecture(config.model, source, architecture_keys(config, source))
    return source


def architecture_keys(config, source: restore.TrunkSource) -> tuple[str, ...]:
    """Options that must agree with the checkpoint (for bert: those that shape parameters)."""
    if config.model.trunk == "bert":
        from mtl.models.trunks.bert import ARCHITECTURE

        return ARCHITECTURE
    return tuple(source.options)


@dataclasses.dataclass(frozen=True)
class Stage:
    """What the stage gives the run: its optimizer, the fresh-start transform, the report."""

    optimizer: optax.GradientTransformation
    fresh_start: Callable[[TrainState, str], TrainState]
    info: Callable[[], dict[str, Any]]


def prepare(
    config: ml_collections.ConfigDict, model: MultiTaskModel, source: restore.TrunkSource | None
) -> Stage:
    """Adds LoRA factors or a soft prompt to `model` if the strategy asks, then plans the
    optimizer."""
    lora_layers = strategies.prepare_model(model, config.finetune, config.seed)
    params = {
        "trunk": _pure(model.trunk),
        "heads": {k: _pure(h) for k, h in model.heads.items()},
    }
    plan = strategies.plan(config.finetune, params)
    summary = strategies.summary(plan, params)
    logging.info(
        "Strategy %s: %d of %d parameters train. Groups: %s",
        config.finetune.strategy,
        summary["trainable"],
        summary["total"],
        json.dumps(summary["groups"]),
    )
    restored: dict[str, int] = {}

    def fresh_start(state: TrainState, workdir: str) -> TrainState:
        copy_tokenizer(config, workdir)
        trunk = state.params["trunk"]
        if source is not None:
            # Loaded arrays come back as host values, the rest as the (global) arrays they were.
            trunk, report = restore.restored_params(
                trunk,
                source,
                keep_fresh=config.init.keep_fresh,
                skip=config.init.skip,
            )
            model_state = dict(state.model_state)
            model_state["trunk"], stats = restore.restored_stats(model_state["trunk"], source)
            state = state.replace(model_state=model_state)
            report["statistics"] = stats
            restored.update({k: len(v) for k, v in report.items()})
            log_restore(source, report)
        # A prompt initialised from vocabulary embeddings copies the restored ones.
        trunk = strategies.strategy(config.finetune).initialize(trunk, config.seed)
        return state.replace(params={**state.params, "trunk": trunk})

    def info() -> dict[str, Any]:
        return {
            "strategy": config.finetune.strategy,
            "trainable_params": summary["trainable"],
            "total_params": summary["total"],
            "groups": summary["groups"],
            "lora_layers": len(lora_layers),
            "restored": dict(restored),
        }

    optimizer = strategies.make_optimizer(plan, config.optimizer, config.num_steps)
    return Stage(optimizer, fresh_start, info)


def _pure(module: nnx.Module) -> dict[str, Any]:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def copy_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The workdir then holds everything a later run needs to start from it."""
    tokenizer_dir = config.data.get("tokenizer_dir")
    if tokenizer_dir and jax.process_index() == 0:
        text.copy_tokenizer(
            text.check_tokenizer_dir(tokenizer_dir), os.path.join(workdir, "tokenizer")
        )


def log_restore(source: restore.TrunkSource, report: dict[str, list[str]]) -> None:
    fresh, skipped = report["fresh"], report["skipped"]
    logging.info(
        "Trunk from %s: %d tensors loaded, %d fresh (%s), %d skipped (%s).",
        source.params_path,
        len(report["loaded"]),
        len(fresh),
        ", ".join(fresh[:4]) + (" ..." if len(fresh) > 4 else ""),
        len(skipped),
        ", ".join(skipped),
    )
