"""Gradient methods on the SentEval multi-task problem, on frozen all-MiniLM-L6-v2 features.

    python -m scripts.senteval_gradient_methods --root=/work/wt/bert/runs/senteval_grad \
        --checkpoint=/work/wt/bert/runs/senteval/minilm --data_dir=../shared/data/senteval \
        --tfds_dir=/work/wt/bert/runs/tfds --readme=docs/results.md

Full fine-tuning of MiniLM once per method and seed does not fit 2 shared CPU cores (one
420-step multi-task run takes about 10 minutes), so the trunk here is a small MLP over the frozen
trunk's mean-pooled sentence features, computed once per task (`mtl.transfer.probe`) and
cached under --root. Every model (one per method, and one single-task model per task) trains
the same number of steps with the same batch of `--batch_size` sentences per task, so each task
sees the same examples in every run. Results are kept per run and seed in
`<root>/results.json`; the script resumes. The markdown table is printed and, with --readme,
written between the README's markers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags, logging

from mtl import entry
from mtl.compare import delta_m
from mtl.weighting import TaskObjective, get_weighting, initial_state
from scripts import readme

_ROOT = flags.DEFINE_string("root", "/tmp/senteval_grad", "Feature cache and results.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Converted MiniLM (launch.convert).")
_DATA = flags.DEFINE_string("data_dir", None, "SentEval folder (else $MTL_SENTEVAL_DIR).")
_TFDS = flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS's default when unset).")
_TASKS = flags.DEFINE_list(
    "tasks", ["mr", "subj", "mpqa", "sst2", "sst5", "trec_coarse", "trec_fine"], "Tasks."
)
_METHODS = flags.DEFINE_list(
    "methods",
    ["equal", "uncertainty", "pcgrad", "mgda", "cagrad", "nash_mtl", "aligned_mtl"],
    "mtl.weighting methods (mgda is MGDA-UB, its default).",
)
_MAX_TRAIN = flags.DEFINE_integer("max_train", 2000, "Training sentences per task (seeded).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 32, "Tokens per sentence.")
_STEPS = flags.DEFINE_integer("steps", 1000, "Training steps of every run.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences per task per step.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per run (initialisation, batches, dropout).")
_README = flags.DEFINE_string("readme", None, "README to write the table into (markers).")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (
    _ROOT,
    _CHECKPOINT,
    _DATA,
    _TFDS,
    _TASKS,
    _METHODS,
    _MAX_TRAIN,
    _MAX_LENGTH,
    _STEPS,
    _BATCH,
    _SEEDS,
    _README,
):
    flags.FLAGS[_holder.name].allow_override = True

BEGIN, END = "<!-- senteval-gradient-methods:begin -->", "<!-- senteval-gradient-methods:end -->"


class Hyper:
    """The MLP and optimiser shared by every run (fixed: the table compares methods)."""

    hidden = 256
    layers = 2
    dropout = 0.1
    learning_rate = 1e-3
    weight_decay = 1e-2
    clip = 1.0  # Nash-MTL's max_norm; applied to every run alike


# ---------------------------------------------------------------------------------- features


def features(root: str, checkpoint: str, tasks: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Per task: train/test mean-pooled features and labels, cached in `<root>/features`."""
    out, trunk, by_inputs = {}, None, {}
    os.makedirs(os.path.join(root, "features"), exist_ok=True)
    for task in tasks:
        path = os.path.join(root, "features", f"{task}.npz")
        if os.path.isfile(path):
            out[task] = dict(np.load(path))
            continue
        from mtl.data import sources
        from mtl.data.senteval import num_classes
        from mtl.transfer import probe

        if trunk is None:
            trunk = _minilm(checkpoint)
        data = sources.senteval(
            tasks=(task,),
            data_dir=_DATA.value,
            tfds_dir=_TFDS.value,
            tokenizer_dir=checkpoint,
            max_length=_MAX_LENGTH.value,
            max_train_examples=_MAX_TRAIN.value,
        )
        arrays = {"classes": np.int32(num_classes(task))}
        for split, part in (("train", data.train), ("test", data.test)):
            # TREC coarse and fine share their sentences: encode them once.
            key = hashlib.sha1(np.ascontiguousarray(part["inputs"]["input_ids"])).hexdigest()
            if key not in by_inputs:
                by_inputs[key] = probe.extract_features(trunk, part["inputs"])
            arrays[f"{split}_x"] = by_inputs[key]
            arrays[f"{split}_y"] = np.asarray(part["labels"][task], np.int32)
        np.savez(path, **arrays)
        logging.info("Features of %s: %s", task, {k: v.shape for k, v in arrays.items()})
        out[task] = arrays
    return out


def _minilm(checkpoint: str):
    from flax import nnx

    from mtl.models.trunks.bert import Bert
    from mtl.transfer import restore

    source = restore.find_source(checkpoint)
    trunk = Bert((), rngs=nnx.Rngs(0), **source.options, pooling="mean")
    restore.restore_trunk(trunk, source)
    return trunk


# ---------------------------------------------------------------------------------- training


def init_params(key: jax.Array, in_features: int, classes: Mapping[str, int]) -> dict:
    """`{"trunk": [layer, ...], "heads": {task: layer}}`, He-initialised dense layers."""
    keys = jax.random.split(key, Hyper.layers + len(classes))
    trunk, width = [], in_features
    for k in keys[: Hyper.layers]:
        trunk.append(
            {
                "kernel": jax.random.normal(k, (width, Hyper.hidden)) * np.sqrt(2.0 / width),
                "bias": jnp.zeros(Hyper.hidden),
            }
        )
        width = Hyper.hidden
    heads = {
        task: {
            "kernel": jax.random.normal(k, (width, c)) * np.sqrt(1.0 / width),
            "bias": jnp.zeros(c),
        }
        for k, (task, c) in zip(keys[Hyper.layers :], classes.items(), strict=True)
    }
    return {"trunk": trunk, "heads": heads}


def mlp(trunk: list, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """The shared representation; dropout after each layer when `key` is given (training)."""
    for layer in trunk:
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
        if key is not None:
            key, sub = jax.random.split(key)
            keep = jax.random.bernoulli(sub, 1 - Hyper.dropout, x.shape)
            x = jnp.where(keep, x / (1 - Hyper.dropout), 0.0)
    return x


@functools.cache
def _trainer(method: str, tasks: tuple[str, ...], steps: int, batch: int):
    """A jitted `(params, xs, ys, key) -> params` running all `steps` in one `lax.scan`
    (one compilation per method and task set, reused across seeds)."""
    weighting = get_weighting(method)
    if weighting.after_update is not None:
        raise ValueError(f"{method} needs a second forward pass; not supported here.")
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, Hyper.learning_rate, max(steps // 10, 1), steps
    )
    tx = optax.chain(
        optax.clip_by_global_norm(Hyper.clip),
        optax.adamw(schedule, weight_decay=Hyper.weight_decay),
    )

    def step(carry, key, xs, ys):
        params, opt_state, w_state = carry
        k_batch, k_drop, k_method = jax.random.split(key, 3)
        idx = {
            t: jax.random.randint(k, (batch,), 0, ys[t].shape[0])
            for t, k in zip(tasks, jax.random.split(k_batch, len(tasks)), strict=True)
        }
        x = jnp.concatenate([xs[t][idx[t]] for t in tasks])  # task t's rows: [t*batch, ...)

        def task_losses(heads, z):
            losses = []
            for i, t in enumerate(tasks):
                logits = z[i * batch : (i + 1) * batch] @ heads[t]["kernel"] + heads[t]["bias"]
                losses.append(
                    optax.softmax_cross_entropy_with_integer_labels(logits, ys[t][idx[t]]).mean()
                )
            return jnp.stack(losses), None

        objective = TaskObjective(
            params["trunk"],
            params["heads"],
            lambda trunk: (mlp(trunk, x, k_drop), None),
            task_losses,
        )
        update, w_state = weighting.update(objective, w_state, k_method)
        grads = {"trunk": update.shared_grads, "heads": update.task_grads}
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, w_state), update.losses

    @jax.jit
    def train(params, xs, ys, key):
        carry = (params, tx.init(params), initial_state(weighting, len(tasks), params["trunk"]))
        keys = jax.random.split(key, steps)
        (params, _, _), losses = jax.lax.scan(lambda c, k: step(c, k, xs, ys), carry, keys)
        return params, losses

    return train


def train_and_test(
    data: Mapping[str, Mapping[str, np.ndarray]],
    tasks: Sequence[str],
    method: str,
    seed: int,
    steps: int,
    batch: int,
) -> dict[str, float]:
    """Trains one model on `tasks` (one head each) and returns test accuracy per task.

    `data[task]` holds `classes`, `train_x`, `train_y`, `test_x`, `test_y`; features are
    standardised with the mean and scale of all tasks' training features (the same in every
    run).
    """
    every = np.concatenate([data[t]["train_x"] for t in data])
    mean, scale = every.mean(0), every.std(0) + 1e-6
    norm = lambda x: jnp.asarray((x - mean) / scale, jnp.float32)  # noqa: E731
    classes = {t: int(data[t]["classes"]) for t in tasks}
    key_init, key_train = jax.random.split(jax.random.key(seed))
    params = init_params(key_init, every.shape[1], classes)
    xs = {t: norm(data[t]["train_x"]) for t in tasks}
    ys = {t: jnp.asarray(data[t]["train_y"]) for t in tasks}
    params, _ = _trainer(method, tuple(tasks), steps, batch)(params, xs, ys, key_train)
    out = {}
    for t in tasks:
        z = mlp(params["trunk"], norm(data[t]["test_x"]))
        logits = z @ params["heads"][t]["kernel"] + params["heads"][t]["bias"]
        out[t] = float(jnp.mean(jnp.argmax(logits, -1) == data[t]["test_y"]))
    return out


# ---------------------------------------------------------------------------------- table


def table(
    tasks: Sequence[str],
    single: Sequence[Mapping[str, float]],
    multi: Mapping[str, Sequence[Mapping[str, float]]],
    seconds: Mapping[str, float],
) -> str:
    """Markdown: per-task test accuracy (%, mean over seeds), mean, Delta-m (mean ± sd over
    seeds, each seed's multi-task model against the same seed's single-task models).

    `single[s][task]` and `multi[method][s][task]` are accuracies of seed s; `seconds` has
    the training wall time summed over seeds per column ("single-task" and each method).
    """
    methods = list(multi)
    avg = lambda runs, t: float(np.mean([r[t] for r in runs]))  # noqa: E731
    lines = ["| task | single-task | " + " | ".join(methods) + " |"]
    lines.append("|" + " --- |" * (2 + len(methods)))
    for t in tasks:
        cells = [f"{100 * avg(single, t):.1f}"] + [f"{100 * avg(multi[m], t):.1f}" for m in methods]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    mean_acc = lambda runs: np.mean([avg(runs, t) for t in tasks])  # noqa: E731
    lines.append(
        "| mean | "
        + " | ".join(
            [f"{100 * mean_acc(single):.1f}"] + [f"{100 * mean_acc(multi[m]):.1f}" for m in methods]
        )
        + " |"
    )
    cells = []
    for m in methods:
        per_seed = [
            delta_m(
                {t: {"accuracy": mr[t]} for t in tasks}, {t: {"accuracy": sr[t]} for t in tasks}
            )
            for mr, sr in zip(multi[m], single, strict=True)
        ]
        cells.append(f"{np.mean(per_seed):+.2f} ± {np.std(per_seed):.2f}")
    lines.append("| Delta-m (%) | 0.00 | " + " | ".join(cells) + " |")
    lines.append(
        "| train wall time (s) | "
        + " | ".join(f"{seconds[c]:.0f}" for c in ["single-task", *methods])
        + " |"
    )
    return "\n".join(lines)


def main(argv):
    del argv
    tasks, root = list(_TASKS.value), _ROOT.value
    os.makedirs(root, exist_ok=True)
    data = features(root, _CHECKPOINT.value, tasks)
    path = os.path.join(root, "results.json")
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)

    def run(name: str, run_tasks: list[str], method: str, seed: int) -> dict[str, float]:
        key = f"{name}/seed{seed}/steps{_STEPS.value}/batch{_BATCH.value}"
        if key not in results:
            start = time.perf_counter()
            accuracy = train_and_test(data, run_tasks, method, seed, _STEPS.value, _BATCH.value)
            results[key] = {"accuracy": accuracy, "seconds": time.perf_counter() - start}
            logging.info("%s: %s", key, results[key])
            with open(path, "w") as f:  # after every run, so a stopped script resumes
                json.dump(results, f, indent=2)
        return results[key]

    seeds = range(_SEEDS.value)
    seconds = {"single-task": 0.0}
    single = [{} for _ in seeds]
    for s in seeds:
        for t in tasks:
            r = run(f"single_{t}", [t], "equal", s)
            single[s].update(r["accuracy"])
            seconds["single-task"] += r["seconds"]
    multi = {}
    for m in _METHODS.value:
        runs = [run(f"multi_{m}", tasks, m, s) for s in seeds]
        multi[m] = [r["accuracy"] for r in runs]
        seconds[m] = sum(r["seconds"] for r in runs)
    counts = {t: len(data[t]["test_y"]) for t in tasks}
    markdown = (
        table(tasks, single, multi, seconds)
        + f"\n\nTest sentences per task: {counts}. {_SEEDS.value} seeds; {_STEPS.value} steps "
        f"of {_BATCH.value} sentences per task in every run; MLP {Hyper.layers}x{Hyper.hidden} "
        f"(ReLU, dropout {Hyper.dropout}) over frozen 384-d mean-pooled MiniLM features; AdamW "
        f"(lr {Hyper.learning_rate:g}, weight decay {Hyper.weight_decay:g}, warm-up 10% + "
        f"cosine, clipping {Hyper.clip:g}); {_MAX_TRAIN.value} training sentences per task."
    )
    print(markdown)
    if _README.value:
        readme.write_between(_README.value, BEGIN, END, markdown)


if __name__ == "__main__":
    entry.run(main)
