"""What trainers that run the multi-task or fine-tuning loop, or read a finished run, need to
rebuild (`sequential`, `dann`, `distill`): the loop, the model, the batch preparation, and an
evaluation of a finished state.

A config with a `finetune` section runs the fine-tuning loop (`mtl.train.finetune`: a trunk from
a checkpoint, a fine-tuning strategy, text batches cut to their longest sentence); any other
runs the multi-task loop (`mtl.train.multitask`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
import ml_collections
import optax

from mtl import parallel
from mtl.data import arrays
from mtl.models import build_model
from mtl.train import finetune, loop, multitask
from mtl.train.multitask_step import make_steps
from mtl.transfer import strategies
from mtl.weighting import equal


def is_finetuning(config: ml_collections.ConfigDict) -> bool:
    return "finetune" in config


def loop_module(config: ml_collections.ConfigDict) -> ModuleType:
    """`finetune` or `multitask`: both have `validate` and `train_and_evaluate`."""
    return finetune if is_finetuning(config) else multitask


def model(config: ml_collections.ConfigDict, tasks, input_shape):
    """The model the loop trains, LoRA layers included when the strategy adds them."""
    built = build_model(config.model, tasks, input_shape, config.seed)
    if is_finetuning(config):
        strategies.prepare_model(built, config.finetune, config.seed)
    return built


def prepare(config: ml_collections.ConfigDict):
    """The loop's host-side batch preparation (text: cut padding), for evaluations."""
    if is_finetuning(config):
        return finetune.trim_padding(config.pad_to_multiple)
    return lambda batch: batch


def test_data(config: ml_collections.ConfigDict, data: arrays.ArrayDataset):
    """Test examples in the order the loop evaluates them (text: sorted by length)."""
    return finetune.sorted_by_length(data) if is_finetuning(config) else data


def evaluate(
    config: ml_collections.ConfigDict, tasks, state: Any, test: arrays.ArrayDataset
) -> dict[str, dict[str, float]]:
    """Per-task test metrics of `state` (`{"params", "model_state"}`, e.g. a finished run's, with
    heads for at least `tasks`) as the loop would evaluate them, with the model rebuilt."""
    built = model(config, tasks, arrays.input_shape(test))
    eval_step = make_steps(built, tasks, optax.identity(), equal(), config.seed).eval_step
    return loop.evaluate(
        jax.jit(eval_step), state, test_data(config, test), config.eval_batch_size,
        parallel.batch_sharding(parallel.make_mesh(config.get("mesh"))), prepare(config),
    )  # fmt: skip
