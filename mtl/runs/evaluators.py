"""Evaluators of supervised runs: per-task test metrics (`results.json`) and the fine-tuning
report (`finetune.json`). Each writes its own records; the loop only calls them.

The config may set any evaluator's schedule (big_vision's `evals`, see
`Experiment.scheduled`): `--config.evals.test.every=500` evaluates the test set every 500 steps
as well as at the end (0: at the end only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import logging
from etils import epath
from jax.sharding import NamedSharding

from mtl import parallel, workdir_files
from mtl.data import arrays, batches, prefetch
from mtl.registry import Registry
from mtl.train.experiment import EvalContext, Evaluator
from mtl.train.state import TrainState

EvalStep = Callable[[TrainState, Any], Mapping[str, Mapping[str, Any]]]
EVALUATORS: Registry = Registry("evaluator")


def mean_metrics(
    eval_step: EvalStep,
    state: TrainState,
    data: arrays.ArrayDataset,
    batch_size: int,
    data_sharding: NamedSharding,
    prepare: batches.Prepare | None = None,
) -> dict[str, dict[str, float]]:
    """Per-task metric means over a whole data set; `prepare` maps each host batch first."""
    totals: dict[str, dict[str, float]] = {}
    rows = parallel.process_rows(batch_size, data_sharding)

    def host_batch(k: int, rows: slice) -> arrays.ArrayDataset:
        batch = arrays.eval_batch(data, batch_size, k)
        batch = prepare(batch) if prepare is not None else batch
        return jax.tree_util.tree_map(lambda a: a[rows], batch)

    # Made ahead in threads, as training batches are: image files decode in parallel.
    count = arrays.num_eval_batches(data, batch_size)
    for local in prefetch.prefetched(host_batch, 0, count, rows):
        global_batch = parallel.to_global(local, data_sharding, batch_size)
        for task, values in jax.device_get(eval_step(state, global_batch)).items():
            acc = totals.setdefault(task, {})
            for k, v in values.items():
                acc[k] = acc.get(k, 0.0) + float(v)
    return {
        task: {k: v / max(acc["count"], 1.0) for k, v in acc.items() if k != "count"}
        | {"count": acc["count"]}
        for task, acc in totals.items()
    }


def report(
    results: Mapping[str, Mapping[str, float]],
    context: EvalContext,
    classes: Mapping[str, Any] | None = None,
) -> None:
    """Logs a per-task table of test metrics and writes them to metrics and `results.json`
    (with the data set's class names per label field, when it has them)."""
    lines = ["Test metrics:"]
    for task, metrics in results.items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "count")
        lines.append(f"  {task:<24s} {shown} (n={int(metrics['count'])})")
    logging.info("\n".join(lines))
    scalars = {
        f"test/{m}/{task}": v
        for task, metrics in results.items()
        for m, v in metrics.items()
        if m != "count"
    }
    context.writer.write(context.step, scalars)
    if jax.process_index() == 0:
        path = epath.Path(context.workdir) / "results.json"  # workdir may be a bucket
        record = {"step": context.step, "test": results}
        if classes:
            record["classes"] = {field: list(names) for field, names in classes.items()}
        workdir_files.write_json(path, record)


@EVALUATORS.register("dataset")
def dataset_metrics(
    name: str,
    eval_step: EvalStep,
    data: arrays.ArrayDataset,
    batch_size: int,
    prepare: batches.Prepare | None = None,
    every: int = 0,
    on_final: Callable[[dict, EvalContext], None] | None = None,
) -> Evaluator:
    """Per-task metrics of `eval_step` over `data` (sorted by length first, so trimmed text
    batches are short); `on_final(results, context)` reports them at the end."""
    data = batches.sorted_by_length(data)
    jitted: dict[str, Any] = {}

    def fn(state: TrainState, context: EvalContext) -> dict[str, Any]:
        if "step" not in jitted:
            jitted["step"] = jax.jit(
                eval_step, in_shardings=(context.state_sharding, context.data_sharding)
            )
        sharding = context.data_sharding
        results = mean_metrics(jitted["step"], state, data, batch_size, sharding, prepare)
        if not context.final:  # during training: means on the progress line and in metrics
            return {f"{m}/{t}": v for t, ms in results.items() for m, v in ms.items()
                    if m != "count"}  # fmt: skip
        if on_final is not None:
            on_final(results, context)
        return results

    return Evaluator(name, fn, every=every)


@EVALUATORS.register("test")
def test_metrics(
    eval_step: EvalStep,
    data: arrays.ArrayDataset,
    batch_size: int,
    prepare: batches.Prepare | None = None,
    every: int = 0,
    classes: Mapping[str, Any] | None = None,
) -> Evaluator:
    """`test`: per-task test metrics, reported and written to `results.json` at the end (with
    the class names of each label field in `classes`)."""
    on_final = lambda results, context: report(results, context, classes)
    return dataset_metrics("test", eval_step, data, batch_size, prepare, every, on_final)


@EVALUATORS.register("finetune_report")
def finetune_report(info: Callable[[], dict[str, Any]]) -> Evaluator:
    """`finetune.json`: the strategy's parameter counts and what was restored (`info()`), the
    steps and seconds trained by this process run."""

    def fn(state: TrainState, context: EvalContext) -> dict[str, Any]:
        values = info() | {"steps_trained": context.step - context.first_step}
        values |= {"train_seconds": context.train_seconds, "total_seconds": context.elapsed()}
        if jax.process_index() == 0:
            path = epath.Path(context.workdir) / "finetune.json"
            path.write_text(json.dumps(values, indent=2))
        return values

    return Evaluator("finetune_report", fn)
