"""Domain-adversarial training (`trainer="dann"`; Ganin & Lempitsky, ICML 2015).

`config.dann.source` and `config.dann.target` name two label fields of the data set. The
source's examples are labelled and train its head (`config.tasks[source]`); the target's are
used without their labels. A `domain` task (head `domain_adversarial`: 2 classes, 0 source,
1 target) reads the trunk's representation through a gradient-reversal layer scaled by
`config.dann.scale`, so the trunk learns features the domain classifier cannot separate.
`scale=0` trains the very same model on the very same batches with no adversarial gradient
into the trunk: the source-only baseline.

The target keeps at most as many training examples as the source (a seeded subset), so that
batches hold both domains about equally. Each phase of the loop is the multi-task loop, or the
fine-tuning loop when the config has a `finetune` section (a BERT trunk from a checkpoint).

At the end the source head is scored on the source's and on the target's test examples (the
only place the target's labels are read); `<workdir>/dann.json` holds both and the domain
classifier's test accuracy (near 50% once the features no longer tell the domains apart).

    python -m launch.train --config=configs/senteval_dann.py:mr,sst2 --workdir=/tmp/dann \
        --config.init.checkpoint=/tmp/minilm --config.data.data_dir=../shared/data/senteval
"""

from __future__ import annotations

import copy
import dataclasses
import os

import jax
import ml_collections
import numpy as np

from mtl import workdir_files
from mtl.data import arrays, batches, sources
from mtl.errors import ConfigError
from mtl.runs import evaluators, supervised
from mtl.tasks import tasks_from_config
from mtl.train.experiment import Result
from mtl.train.loop import run

DOMAIN = "domain"


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(source="", target="", scale=0.1))


def check(config: ml_collections.ConfigDict) -> tuple[str, str, float]:
    """`(source, target, scale)`, or one `ConfigError` naming the field to fix."""
    source, target, scale = config.dann.source, config.dann.target, float(config.dann.scale)
    if not source or not target or source == target:
        raise ConfigError(
            "config.dann.source and config.dann.target must name two different label fields of "
            f"the data set, got {source!r} and {target!r}."
        )
    if source not in config.tasks:
        raise ConfigError(
            f"config.dann.source={source!r} is not a task of config.tasks "
            f"({', '.join(config.tasks)}): the source task's head is the one trained."
        )
    if DOMAIN in config.tasks or target in config.tasks:
        raise ConfigError(
            f"config.tasks must not hold {DOMAIN!r} or the target {target!r}: the trainer adds "
            "the domain classifier, and the target's labels are never trained on."
        )
    if scale < 0:
        raise ConfigError(f"config.dann.scale must be >= 0 (0: source only), got {scale}.")
    return source, target, scale


def with_domains(
    data: arrays.ArrayDataset, source: str, target: str, seed: int | None = None
) -> arrays.ArrayDataset:
    """The source's and target's examples with a domain label each (0 source, 1 target); the
    target's class labels are dropped. With `seed`, a target larger than the source is cut to
    a seeded subset of the source's size (training); without, all are kept (testing)."""
    is_source = np.asarray(data["masks"][source], bool)
    is_target = np.asarray(data["masks"][target], bool) & ~is_source
    target_rows = np.flatnonzero(is_target)
    if seed is not None and len(target_rows) > is_source.sum():
        target_rows = np.random.default_rng(seed).permutation(target_rows)[: is_source.sum()]
    rows = np.sort(np.concatenate([np.flatnonzero(is_source), target_rows]))
    labelled = {
        "inputs": data["inputs"],
        "labels": {source: data["labels"][source], DOMAIN: is_target.astype(np.int32)},
        "masks": {source: is_source, DOMAIN: np.ones_like(is_source)},
    }
    return arrays.take(labelled, rows)


def target_as_source(data: arrays.ArrayDataset, source: str, target: str):
    """The target's test examples with their labels under the source's field, to score the
    source head on them."""
    rows = np.flatnonzero(np.asarray(data["masks"][target], bool))
    relabelled = {
        "inputs": data["inputs"],
        "labels": {source: data["labels"][target]},
        "masks": {source: np.ones(len(data["masks"][target]), bool)},
    }
    return arrays.take(relabelled, rows)


def train(config: ml_collections.ConfigDict, workdir: str) -> Result:
    """The DANN run; `Result.metrics["test"]` adds the source head's target test metrics."""
    source, target, scale = check(config)
    run_config = copy.deepcopy(config)
    run_config.unlock()  # launch.train's configs are locked; this copy adds the domain task
    run_config.tasks[DOMAIN] = dict(head="domain_adversarial", num_outputs=2, label=DOMAIN)
    supervised.require_mixed(run_config)
    supervised.check(run_config)  # names, options, checkpoint (and the text tokenizer)
    # The target is loaded as a task with the source's classes, so its labels are checked to
    # fit the source head before anything trains.
    spec = dict(config.tasks[source]) | {"label": target}
    both = tasks_from_config({source: config.tasks[source], target: spec})
    data = supervised.load_data(run_config, both)
    domains = sources.MultiTaskData(
        with_domains(data.train, source, target, seed=config.seed),
        with_domains(data.test, source, target),
        data.classes,
    )
    parts = supervised.parts(run_config, data=domains)
    parts.model.heads[DOMAIN].reversal_scale = scale  # static: set before the steps are made
    steps = parts.steps()
    # The source head alone on the target's examples (they have no domain labels).
    source_only = dataclasses.replace(
        parts, tasks=tuple(t for t in parts.tasks if t.name == source)
    )
    on_target = evaluators.dataset_metrics(
        "target", source_only.steps().eval_step, target_as_source(data.test, source, target),
        run_config.eval_batch_size, batches.trim_text(int(run_config.get("pad_to_multiple", 0))),
    )  # fmt: skip
    result = run(supervised.experiment(parts, steps).add_evaluators(on_target), workdir)
    if result.stopped:
        return result
    results = result["test"] | {f"{target} (by the {source} head)": result["target"][source]}
    if jax.process_index() == 0:
        report = {
            "source": source,
            "target": target,
            "scale": scale,
            "source_test": results[source]["accuracy"],
            "target_test": result["target"][source]["accuracy"],
            "domain_test": results[DOMAIN]["accuracy"],
        }
        workdir_files.write_json(os.path.join(workdir, "dann.json"), report)
    return dataclasses.replace(result, metrics=result.metrics | {"test": results})
