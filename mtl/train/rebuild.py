"""What trainers that run the multi-task or fine-tuning loop, then evaluate the result their own
way (`sequential`, `dann`), need to rebuild: the loop, the model and the batch preparation.

A config with a `finetune` section runs the fine-tuning loop (`mtl.train.finetune`: a trunk from
a checkpoint, a fine-tuning strategy, text batches cut to their longest sentence); any other
runs the multi-task loop (`mtl.train.multitask`).
"""

from __future__ import annotations

from types import ModuleType

import ml_collections

from mtl.data import arrays
from mtl.models import build_model
from mtl.train import finetune, multitask
from mtl.transfer import strategies


def is_finetuning(config: ml_collections.ConfigDict) -> bool:
    return "finetune" in config


def loop_module(config: ml_collections.ConfigDict) -> ModuleType:
    """`finetune` or `multitask`: both have `validate` and `train_and_evaluate`."""
    return finetune if is_finetuning(config) else multitask


def model(config: ml_collections.ConfigDict, tasks, data: arrays.ArrayDataset):
    """The model the loop trains, LoRA layers included when the strategy adds them."""
    built = build_model(config.model, tasks, arrays.input_shape(data), config.seed)
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
