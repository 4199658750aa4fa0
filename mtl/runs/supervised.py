"""Supervised training, multi-task or fine-tuning: `build(config) -> Experiment`.

One trunk, one head per task, batches drawn from all tasks' examples (or one group per task,
`batch_layout="per_task"`), losses combined by `config.weighting`. A config with a `finetune`
section adds the fine-tuning stage (`mtl.runs.finetune_stage`: a pretrained trunk, a strategy's
optimizer). Text batches are trimmed to their longest sentence by the batch source.

Order of work, so that bad input fails fast: every name and option in the config is checked,
then the data is loaded and its labels checked against the tasks, and only then is anything
built or compiled. Composed runs (`sequential`, `dann`, `distill`, `affinity`) build `Parts`,
replace what they change, wrap the pure `Steps` and call `experiment(parts, steps)`.

    experiment = build(config)
    result = run(experiment, workdir)   # result.metrics["test"]: per-task test metrics
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
import optax

from mtl import distributed, optim, parallel, sharding
from mtl.data import arrays, batches, sources
from mtl.errors import ConfigError, unknown_name
from mtl.models import TRUNKS, build_model, causal_lm, precision
from mtl.models.architectures import HARD_SHARING
from mtl.models.multitask import MultiTaskModel, architecture_of, architecture_options
from mtl.runs import evaluators, finetune_stage
from mtl.runs.supervised_step import Steps, make_steps
from mtl.tasks import Task, check_labels, tasks_from_config
from mtl.train.experiment import Experiment, Result
from mtl.train.loop import run
from mtl.weighting import get_weighting
from mtl.weighting.base import Weighting

# Config fields that define what the checkpoints in a workdir hold.
GUARDED = ("model", "tasks", "weighting", "optimizer")
LAYOUTS = ("mixed", "per_task")


def batch_layout(config: ml_collections.ConfigDict) -> str:
    """The configured `batch_layout`: "mixed" (the default) or "per_task"."""
    return config.get("batch_layout", "mixed")


def validate(config: ml_collections.ConfigDict) -> tuple[tuple[Task, ...], Weighting]:
    """Checks every name in the config; returns the tasks and the weighting method."""
    tasks = tasks_from_config(config.tasks)
    trunk = config.model.trunk
    TRUNKS.get(trunk, field="model.trunk")
    options = TRUNKS.options_from(trunk, config.model.get(trunk), field=f"model.{trunk}")
    precision.trunk_options(trunk, options, precision.of(config))
    check_architecture(config)
    weighting = get_weighting(config.weighting.name, config.weighting.get(config.weighting.name))
    optim.make_optimizer(config.optimizer, config.num_steps)
    sources.SOURCES.get(config.data.name, field="data.name")
    check_batch_layout(config, tasks)
    return tasks, weighting


def check_architecture(config: ml_collections.ConfigDict) -> None:
    """`model.architecture` and its options; architectures other than hard sharing are trained
    by `trainer="multitask"` from fresh weights only."""
    name = architecture_of(config.model)
    architecture_options(config.model)
    if name == HARD_SHARING:
        return
    trainer = config.get("trainer", "multitask")
    if trainer != "multitask":
        raise ConfigError(
            f"model.architecture={name} is trained by trainer='multitask' only, not "
            f"{trainer!r}: set --config.model.architecture=hps."
        )
    if finetune_stage.enabled(config):
        raise ConfigError(
            f"model.architecture={name} starts from fresh weights; a fine-tuning stage "
            "(config.finetune) loads one pretrained trunk into hard sharing. Remove "
            "config.finetune or set --config.model.architecture=hps."
        )


def check_batch_layout(config: ml_collections.ConfigDict, tasks) -> None:
    """`batch_layout` is "mixed" (rows drawn from all examples) or "per_task" (one equal group
    of rows per task: see `make_steps(per_task_batch=...)`)."""
    layout = batch_layout(config)
    if layout not in LAYOUTS:
        raise unknown_name("batch layout", layout, LAYOUTS, field="batch_layout")
    if layout == "per_task" and config.batch_size % len(tasks):
        raise ConfigError(
            f"batch_layout='per_task' splits the batch into one equal group per task, but "
            f"batch_size={config.batch_size} is not a multiple of the {len(tasks)} tasks. "
            f"Set --config.batch_size to a multiple of {len(tasks)}."
        )


def load_data(config: ml_collections.ConfigDict, tasks) -> sources.MultiTaskData:
    """The configured data set, restricted to the tasks' label fields and checked against them."""
    # Process 0 prepares the data set first: the others then read what it prepared.
    data = distributed.first_on_process_0(lambda: sources.load(config.data), "load_data")
    data = data.map(lambda ds: with_lm_labels(ds, tasks))
    for split, ds in (("train", data.train), ("test", data.test)):
        check_labels(tasks, ds["labels"], ds["masks"], split)
    fields = sorted({t.label for t in tasks})
    return data.map(lambda ds: arrays.select_fields(ds, fields))


def with_lm_labels(ds: dict, tasks) -> dict:
    """`ds` with the labels of its causal-LM tasks: the tokens themselves (-1 at padding),
    under each task's label field."""
    language = [t for t in tasks if t.loss == "causal_lm"]
    if not language:
        return ds
    if not isinstance(ds["inputs"], Mapping) or "input_ids" not in ds["inputs"]:
        raise ConfigError(
            f"Task {language[0].name!r} is a causal_lm task, which needs tokenised text inputs "
            "(a text data source such as text_table)."
        )
    labels, mask = causal_lm.lm_labels(ds["inputs"])
    fields = {t.label for t in language}
    return {
        **ds,
        "labels": {**ds["labels"], **dict.fromkeys(fields, labels)},
        "masks": {**ds["masks"], **dict.fromkeys(fields, mask)},
    }


def require_mixed(config: ml_collections.ConfigDict) -> None:
    """Composed runs draw mixed batches: `ConfigError` for `batch_layout="per_task"`."""
    if batch_layout(config) == "per_task":
        raise ConfigError(
            f"batch_layout='per_task' is supported by trainer='multitask' only, not "
            f"{config.trainer!r}: set --config.batch_layout=mixed."
        )


@dataclasses.dataclass(frozen=True)
class Parts:
    """What a supervised run is built from; a composed run replaces the fields it changes."""

    config: ml_collections.ConfigDict
    tasks: tuple[Task, ...]
    data: sources.MultiTaskData
    model: MultiTaskModel
    weighting: Weighting
    optimizer: optax.GradientTransformation
    stage: finetune_stage.Stage | None = None  # the fine-tuning stage, when configured

    def steps(self, task_loss: Any = None) -> Steps:
        """The pure init / train / eval steps of these parts (see `make_steps`)."""
        return make_steps(
            self.model,
            self.tasks,
            self.optimizer,
            self.weighting,
            self.config.seed,
            task_loss,
            per_task_batch=batch_layout(self.config) == "per_task",
        )


def check(config: ml_collections.ConfigDict):
    """Every name and option of `config` (and the fine-tuning stage's checkpoint) checked, before
    any data is read; returns the tasks, the weighting and the trunk checkpoint (or None)."""
    tasks, weighting = validate(config)
    source = finetune_stage.check(config) if finetune_stage.enabled(config) else None
    return tasks, weighting, source


def model(config: ml_collections.ConfigDict, tasks, input_shape) -> MultiTaskModel:
    """The model a supervised config trains, LoRA factors included when its strategy adds
    them (to rebuild a finished run, e.g. a distillation teacher)."""
    built = build_model(config.model, tasks, input_shape, config.seed, precision.of(config))
    if finetune_stage.enabled(config):
        finetune_stage.strategies.prepare_model(built, config.finetune, config.seed)
    return built


def parts(config: ml_collections.ConfigDict, data: sources.MultiTaskData | None = None) -> Parts:
    """Checks `config`, loads the data (unless given: `load_data(config, tasks)`'s value) and
    builds the model and the optimizer (through the fine-tuning stage when configured)."""
    tasks, weighting, source = check(config)
    if data is None:
        data = load_data(config, tasks)  # causal-LM labels included
    else:  # data handed in as it is (a no-op unless a causal_lm task needs its labels)
        data = data.map(lambda ds: with_lm_labels(ds, tasks))
    shape = arrays.input_shape(data.train)
    model = build_model(config.model, tasks, shape, config.seed, precision.of(config))
    if not finetune_stage.enabled(config):
        optimizer = optim.make_optimizer(config.optimizer, config.num_steps)
        return Parts(config, tasks, data, model, weighting, optimizer)
    stage = finetune_stage.prepare(config, model, source)
    return Parts(config, tasks, data, model, weighting, stage.optimizer, stage)


def experiment(parts: Parts, steps: Steps | None = None) -> Experiment:
    """The Experiment of `parts` with `steps` (default `parts.steps()`)."""
    config, tasks = parts.config, parts.tasks
    steps = parts.steps() if steps is None else steps
    mesh = parallel.make_mesh(config.get("mesh"))
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, field="eval_batch_size")
    rules = sharding.config_rules(config)
    sharding.check_rules(rules, mesh)
    prepare = batches.trim_text(int(config.get("pad_to_multiple", 0)))
    fields = [t.label for t in tasks]
    if batch_layout(config) == "per_task":
        sampler = batches.per_task_sampler(config.seed, parts.data.train, config.batch_size, fields)
    else:
        sampler = batches.mixed_sampler(config.seed, parts.data.train, config.batch_size)
    test = evaluators.test_metrics(
        steps.eval_step,
        parts.data.test,
        config.eval_batch_size,
        prepare,
        classes=parts.data.classes,
    )
    evals = (test,) if parts.stage is None else (test, evaluators.finetune_report(parts.stage.info))
    return Experiment(
        config=config,
        init=steps.init,
        train_step=steps.train_step,
        batches=batches.ArrayBatches(parts.data.train, sampler, config.batch_size, prepare),
        mesh=mesh,
        guarded=GUARDED + (finetune_stage.GUARDED if parts.stage is not None else ()),
        loss_names=tuple(t.name for t in tasks),
        progress={t.name: f"loss/{t.name}" for t in tasks},
        evaluators=evals,
        rules=tuple(rules),
        fresh_start=None if parts.stage is None else parts.stage.fresh_start,
    )


def build(config: ml_collections.ConfigDict) -> Experiment:
    return experiment(parts(config))


def train(config: ml_collections.ConfigDict, workdir: str) -> Result:
    """Trains (or resumes) and evaluates; `Result.metrics["test"]` holds per-task metrics."""
    return run(build(config), workdir)
