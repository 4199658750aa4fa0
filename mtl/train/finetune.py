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

from mtl import checkpoint, parallel, preemption, sharding
from mtl.data import arrays, text
from mtl.logs import MetricsWriter, Progress
from mtl.models import build_model
from mtl.train import multitask
from mtl.train.multitask_step import make_steps
from mtl.transfer import restore, strategies

MODEL_KEYS = ("model", "tasks", "weighting", "optimizer", "finetune", "init")


def validate(config: ml_collections.ConfigDict):
    """Checks names, options and the init checkpoint; returns tasks, weighting and the source."""
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


def _trim(multiple: int):
    """Host-batch function that cuts token arrays to the batch's longest sentence."""

    def prepare(batch):
        if multiple <= 0 or not isinstance(batch["inputs"], dict):
            return batch
        return batch | {"inputs": text.trim_padding(batch["inputs"], multiple)}

    return prepare


def _by_length(data: arrays.ArrayDataset) -> arrays.ArrayDataset:
    """Evaluation examples sorted by length, so trimmed evaluation batches are short."""
    inputs = data["inputs"]
    if not isinstance(inputs, dict) or "attention_mask" not in inputs:
        return data
    return arrays.take(data, np.argsort(np.sum(inputs["attention_mask"], 1), kind="stable"))


def _params(model) -> dict[str, Any]:
    pure = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.Param))
    return {"trunk": pure(model.trunk), "heads": {k: pure(h) for k, h in model.heads.items()}}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """Fine-tunes (or resumes) and returns per-task test metrics."""
    start_time = time.perf_counter()
    tasks, weighting, source = validate(config)
    data = multitask.load_data(config, tasks)
    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, field="eval_batch_size")
    rules = sharding.config_rules(config)
    sharding.check_rules(rules, mesh)
    checkpoint.check_config(workdir, config, MODEL_KEYS)

    model = build_model(config.model, tasks, arrays.input_shape(data.train), config.seed)
    lora_layers = strategies.prepare_model(model, config.finetune, config.seed)
    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        every=config.checkpoint.every,
        keep=config.checkpoint.keep,
    )
    restored_from = {}
    if source is not None and manager.latest_step() is None:
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

    plan = strategies.plan(config.finetune, _params(model))
    summary = strategies.summary(plan, _params(model))
    logging.info(
        "Strategy %s: %d of %d parameters train. Groups: %s",
        config.finetune.strategy,
        summary["trainable"],
        summary["total"],
        json.dumps(summary["groups"]),
    )
    optimizer = strategies.make_optimizer(plan, config.optimizer, config.num_steps)
    steps = make_steps(model, tasks, optimizer, weighting, config.seed)

    # The state is replicated except where sharding rules split it (big trunks).
    state_shapes = jax.eval_shape(steps.init)
    state_sharding = sharding.tree_shardings(state_shapes, rules, mesh)
    if rules:
        logging.info("%s", sharding.summary(state_shapes, state_sharding))
    data_sharding = parallel.batch_sharding(mesh)
    init = jax.jit(steps.init, out_shardings=state_sharding)
    train_step = jax.jit(
        steps.train_step,
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    eval_step = jax.jit(steps.eval_step, in_shardings=(state_sharding, data_sharding))

    state = init()
    try:
        restored = checkpoint.restore_latest(manager, state)
    except BaseException:
        manager.close()  # a refused or failed restore still ends Orbax's background threads
        raise
    if restored is not None:
        state = restored
        logging.info("Resumed from %s at step %d.", manager.directory, int(state["step"]))
    first_step = int(state["step"])
    checkpoint.record_config(workdir, config)  # only now: a refused restore leaves no trace

    prepare = _trim(config.pad_to_multiple)
    writer = MetricsWriter(workdir)
    progress = Progress(config.num_steps, first_step)
    preemption.install_sigterm_handler()
    train_rows = parallel.process_rows(config.batch_size, data_sharding)
    n_train = arrays.num_examples(data.train)
    step = first_step
    train_start = time.perf_counter()
    try:
        while step < config.num_steps:
            index = arrays.batch_indices(config.seed, step, n_train, config.batch_size)
            # Trim the global batch, then take this process's rows: all processes agree on
            # the width.
            batch = prepare(arrays.take(data.train, index))
            batch = jax.tree_util.tree_map(lambda a: a[train_rows], batch)
            state, metrics = train_step(
                state, parallel.to_global(batch, data_sharding, config.batch_size)
            )
            step += 1
            stop = preemption.should_stop(step)  # once per step, the same on every process
            log_due = step % config.log_every == 0 or step == config.num_steps
            save_due = manager.should_save(step) or stop
            if log_due or save_due:
                multitask._check_finite(
                    jax.device_get(state["nonfinite"]), tasks, manager.directory
                )
            if log_due:
                scalars = {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}
                rate = progress.rate(step)
                writer.write(step, scalars | {"steps_per_sec": rate})
                losses = {t.name: scalars[f"train/loss/{t.name}"] for t in tasks}
                progress.log(progress.line(step, rate, losses))
            if save_due:
                checkpoint.save(manager, step, state, force=stop)
            if stop:
                manager.wait_until_finished()
                logging.info("Stop requested: saved step %d in %s; exiting.", step, workdir)
                return {}
        jax.block_until_ready(state)
        train_seconds = time.perf_counter() - train_start
        checkpoint.save(manager, step, state, force=True)
        test = _by_length(data.test)
        results = multitask.evaluate(
            eval_step, state, test, config.eval_batch_size, data_sharding, prepare
        )
        multitask._report(results, workdir, writer, step)
        if jax.process_index() == 0:
            info = {
                "strategy": config.finetune.strategy,
                "trainable_params": summary["trainable"],
                "total_params": summary["total"],
                "groups": summary["groups"],
                "lora_layers": len(lora_layers),
                "restored": restored_from,
                "steps_trained": step - first_step,
                "train_seconds": train_seconds,
                "total_seconds": time.perf_counter() - start_time,
            }
            with open(os.path.join(workdir, "finetune.json"), "w") as f:
                json.dump(info, f, indent=2)
        return results
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
