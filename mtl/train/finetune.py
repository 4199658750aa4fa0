"""Fine-tuning a pretrained trunk on one or more tasks: `train_and_evaluate(config, workdir)`.

The multi-task loop (`mtl.train.multitask`) with what transfer needs on top:

- the trunk starts from a checkpoint (`init.checkpoint`: a converted model or a run's workdir;
  `mtl.transfer.restore`), with fresh heads for the configured tasks;
- the optimizer follows a fine-tuning strategy (`config.finetune`; `mtl.transfer.strategies`):
  frozen parameters get no updates and no optimizer state;
- text batches are cut to their longest sentence, rounded up to `pad_to_multiple` tokens.

Several tasks train together as in the multi-task loop: one trunk, one head per task, batches
drawn from all tasks' examples, losses combined by `config.weighting`.

Bad input fails before anything heavy: names and options are checked, the checkpoint's
architecture is compared with the config, then data is loaded and checked, then the model is
built and compiled. A workdir with checkpoints resumes from the newest (the init checkpoint is
then not read).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from mtl import checkpoint
from mtl.data import arrays, text
from mtl.logs import MetricsWriter
from mtl.models import build_model
from mtl.train import loop, multitask
from mtl.train.multitask_step import make_steps
from mtl.transfer import restore, strategies

MODEL_KEYS = ("model", "tasks", "weighting", "optimizer", "finetune", "init")


def validate(config: ml_collections.ConfigDict):
    """Checks names, options and the init checkpoint; returns tasks, weighting and the source."""
    text.default_tokenizer_dir(config.data, config.init.checkpoint)
    tasks, weighting = multitask.validate(config)
    strategies.check(config.finetune, config.num_steps)
    source = None
    if config.init.checkpoint:
        source = restore.find_source(config.init.checkpoint)
        keys = _architecture_keys(config.model.trunk, source)
        restore.check_architecture(config.model, source, keys)
    return tasks, weighting, source


def _architecture_keys(trunk: str, source: restore.TrunkSource) -> tuple[str, ...]:
    """Options that must agree with the checkpoint (for bert: those that shape parameters)."""
    if trunk == "bert":
        from mtl.models.trunks.bert import ARCHITECTURE

        return ARCHITECTURE
    return tuple(source.options)


def trim_padding(multiple: int):
    """Host-batch function that cuts token arrays to the batch's longest sentence."""

    def prepare(batch):
        if multiple <= 0 or not isinstance(batch["inputs"], dict):
            return batch
        return batch | {"inputs": text.trim_padding(batch["inputs"], multiple)}

    return prepare


def sorted_by_length(data: arrays.ArrayDataset) -> arrays.ArrayDataset:
    """Evaluation examples sorted by length, so trimmed evaluation batches are short."""
    inputs = data["inputs"]
    if not isinstance(inputs, dict) or "attention_mask" not in inputs:
        return data
    return arrays.take(data, np.argsort(np.sum(inputs["attention_mask"], 1), kind="stable"))


def _params(model) -> dict[str, Any]:
    pure = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.Param))
    return {"trunk": pure(model.trunk), "heads": {k: pure(h) for k, h in model.heads.items()}}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, steps_fn=make_steps, data=None
) -> dict[str, dict]:
    """Fine-tunes (or resumes) and returns per-task test metrics.

    `steps_fn(model, tasks, optimizer, weighting, seed) -> Steps` builds the pure steps, and
    `data` is the already loaded data set if any, as in `multitask.train_and_evaluate`
    (distillation passes both: steps that run a teacher, and the data it sized the teacher on).
    """
    start_time = time.perf_counter()
    tasks, weighting, source = validate(config)
    data = multitask.load_data(config, tasks) if data is None else data
    mesh, rules = loop.mesh_and_rules(config)
    checkpoint.check_config(workdir, config, MODEL_KEYS)

    model = build_model(config.model, tasks, arrays.input_shape(data.train), config.seed)
    lora_layers = strategies.prepare_model(model, config.finetune, config.seed)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    restored_from = {}
    if source is not None and checkpoint.latest_step(checkpoint_dir) is None:
        report = restore.restore_trunk(
            model.trunk, source, keep_fresh=config.init.keep_fresh, skip=config.init.skip
        )
        restored_from = {k: len(v) for k, v in report.items()}
        logging.info(
            "Trunk from %s: %d tensors loaded, %d fresh (%s), %d skipped (%s).",
            source.params_path,
            len(report["loaded"]),
            len(report["fresh"]),
            ", ".join(report["fresh"][:4]) + (" ..." if len(report["fresh"]) > 4 else ""),
            len(report["skipped"]),
            ", ".join(report["skipped"]),
        )
    tokenizer_dir = config.data.get("tokenizer_dir")
    if tokenizer_dir and jax.process_index() == 0:
        # The workdir then holds everything a later run needs to start from it.
        text.copy_tokenizer(
            text.check_tokenizer_dir(tokenizer_dir), os.path.join(workdir, "tokenizer")
        )

    params = _params(model)
    plan = strategies.plan(config.finetune, params)
    summary = strategies.summary(plan, params)
    logging.info(
        "Strategy %s: %d of %d parameters train. Groups: %s",
        config.finetune.strategy,
        summary["trainable"],
        summary["total"],
        json.dumps(summary["groups"]),
    )
    optimizer = strategies.make_optimizer(plan, config.optimizer, config.num_steps)
    compiled = loop.compile_steps(
        steps_fn(model, tasks, optimizer, weighting, config.seed), mesh, rules
    )
    prepare = trim_padding(config.pad_to_multiple)
    manager = checkpoint.make_manager(
        checkpoint_dir, every=config.checkpoint.every, keep=config.checkpoint.keep
    )
    writer = None
    try:
        state = loop.restore_or_init(manager, compiled, workdir, config)
        first_step = int(state["step"])
        writer = MetricsWriter(workdir)  # after the restore: a refused one writes nothing
        trained = loop.train(config, tasks, compiled, state, data.train, manager, writer, prepare)
        if trained.stopped:
            return {}
        step = int(trained.state["step"])
        results = loop.evaluate(
            compiled.eval_step, trained.state, sorted_by_length(data.test), config.eval_batch_size,
            compiled.data_sharding, prepare,
        )  # fmt: skip
        loop.report(results, workdir, writer, step)
        if jax.process_index() == 0:
            info = {
                "strategy": config.finetune.strategy,
                "trainable_params": summary["trainable"],
                "total_params": summary["total"],
                "groups": summary["groups"],
                "lora_layers": len(lora_layers),
                "restored": restored_from,
                "steps_trained": step - first_step,
                "train_seconds": trained.seconds,
                "total_seconds": time.perf_counter() - start_time,
            }
            with open(os.path.join(workdir, "finetune.json"), "w") as f:
                json.dump(info, f, indent=2)
        return results
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()
