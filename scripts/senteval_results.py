"""SentEval results of the converted all-MiniLM-L6-v2: the README's table and transfer matrix.

    python -m scripts.senteval_results --root=/tmp/senteval_results \
        --data_dir=../shared/data/senteval --readme=docs/results.md

Runs, each skipped when its results are already under --root (so the command resumes):

1. `probe`: frozen trunk, mean-pooled features computed once, softmax regression per task;
2. `full`: full fine-tuning, one run per task;
3. `lora`: LoRA on all attention and feed-forward projections, one run per task;
   `prompt`: prompt tuning (`--prompt_length` soft prompt vectors, the trunk frozen), one run
   per task (not in the default parts);
4. `mtl`: one run on all tasks together (one head each, equal loss weights);
5. `pairs`: every pair of `--pair_tasks` trained together, for the transfer matrix (its
   "all tasks" column, from `mtl`, covers every task).

Every fine-tuning run gives each of its tasks the same budget (`--steps_per_task` steps of
`--batch_size` sentences, so a pair trains twice as many steps as a single task and sees the
same examples of each), on a seeded subset of `--max_train` training sentences per task,
truncated to `--max_length` tokens; tests use the full test splits. The markdown (with the
exact budgets) is printed and, with --readme, written between the README's markers.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time

from absl import flags, logging

from mtl import entry
from scripts import readme
from scripts.finished_runs import run_once
from scripts.transfer_matrix import transfer_matrix

_ROOT = flags.DEFINE_string("root", "/tmp/senteval_results", "Where runs and results go.")
_DATA = flags.DEFINE_string("data_dir", None, "SentEval folder (else $MTL_SENTEVAL_DIR).")
_TFDS = flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS's default when unset).")
_TASKS = flags.DEFINE_list(
    "tasks", ["mr", "subj", "mpqa", "sst2", "sst5", "trec_coarse", "trec_fine"], "Tasks."
)
_PAIR_TASKS = flags.DEFINE_list(
    "pair_tasks",
    ["mr", "subj", "mpqa", "sst2", "sst5", "trec_coarse", "trec_fine"],
    "Tasks whose pairs are trained for the transfer matrix (all 7: 21 pair runs).",
)
_PARTS = flags.DEFINE_list("parts", ["probe", "full", "lora", "mtl", "pairs"], "What to run.")
_STEPS = flags.DEFINE_integer("steps_per_task", 60, "Training steps per task in a run.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences per step.")
_MAX_TRAIN = flags.DEFINE_integer("max_train", 2000, "Training sentences per task (seeded).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 32, "Tokens per sentence, [CLS]/[SEP] included.")
_LR_FULL = flags.DEFINE_float("lr_full", 1e-4, "Peak learning rate of full fine-tuning.")
_LR_LORA = flags.DEFINE_float("lr_lora", 1e-3, "Peak learning rate with LoRA.")
_RANK = flags.DEFINE_integer("lora_rank", 8, "LoRA rank.")
_ALPHA = flags.DEFINE_float("lora_alpha", 16.0, "LoRA alpha (the update is scaled by alpha/rank).")
_LR_PROMPT = flags.DEFINE_float("lr_prompt", 3e-2, "Peak learning rate of prompt tuning.")
_PROMPT_LENGTH = flags.DEFINE_integer("prompt_length", 20, "Soft prompt vectors.")
_MARKER = flags.DEFINE_string("marker", "senteval-results", "Name of the page's markers.")
_README = flags.DEFINE_string("readme", None, "README to write the results into (markers).")
_RUN = flags.DEFINE_bool("run", True, "Run what is missing; with --norun only render what exists.")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (
    _ROOT,
    _DATA,
    _TFDS,
    _TASKS,
    _PAIR_TASKS,
    _PARTS,
    _STEPS,
    _BATCH,
    _MAX_TRAIN,
    _MAX_LENGTH,
    _LR_FULL,
    _LR_LORA,
    _RANK,
    _ALPHA,
    _LR_PROMPT,
    _PROMPT_LENGTH,
    _MARKER,
    _README,
    _RUN,
):
    flags.FLAGS[_holder.name].allow_override = True


def config_for(tasks: list[str], strategy: str, checkpoint: str):
    from configs import senteval_finetune

    config = senteval_finetune.get_config(",".join(tasks))
    steps = _STEPS.value * len(tasks)
    config.num_steps = steps
    config.batch_size = _BATCH.value
    config.log_every = max(steps // 4, 1)
    config.init.checkpoint = checkpoint
    config.data.data_dir = _DATA.value
    config.data.tfds_dir = _TFDS.value
    config.data.max_length = _MAX_LENGTH.value
    config.data.max_train_examples = _MAX_TRAIN.value
    config.optimizer.warmup_steps = max(steps // 10, 1)
    config.checkpoint.every = steps  # only the final one, deleted after reading the results
    config.finetune.strategy = strategy
    config.optimizer.learning_rate = _LR_FULL.value
    if strategy == "lora":
        config.optimizer.learning_rate = _LR_LORA.value
        config.finetune.lora.rank = _RANK.value
        config.finetune.lora.alpha = _ALPHA.value
    if strategy == "prompt_tuning":
        config.optimizer.learning_rate = _LR_PROMPT.value
        config.finetune.prompt_tuning.length = _PROMPT_LENGTH.value
    return config


def finetune_run(name: str, tasks: list[str], strategy: str, checkpoint: str) -> dict | None:
    """Results of one fine-tuning run: {"test": {task: {...}}, "info": finetune.json}."""
    from mtl.runs import supervised

    workdir = os.path.join(_ROOT.value, "runs", name)
    config = config_for(tasks, strategy, checkpoint)
    result = run_once(workdir, supervised.train, config, _RUN.value)
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)  # 270 MB each
    return result


def probe_run(checkpoint: str) -> dict:
    """Frozen trunk + softmax regression on cached mean-pooled features, per task."""
    path = os.path.join(_ROOT.value, "runs", "probe", "results.json")
    out = {}
    if os.path.isfile(path):
        with open(path) as f:
            out = json.load(f)
    if all(task in out for task in _TASKS.value) or not _RUN.value:
        return {task: out[task] for task in _TASKS.value if task in out}
    from flax import nnx

    from mtl.data import sources
    from mtl.data.senteval import num_classes
    from mtl.models.trunks.bert import Bert
    from mtl.transfer import probe, restore

    source = restore.find_source(checkpoint)
    trunk = Bert((), rngs=nnx.Rngs(0), **source.options, pooling="mean")
    restore.restore_trunk(trunk, source)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for task in _TASKS.value:
        if task in out:
            continue
        start = time.perf_counter()
        data = sources.senteval(
            tasks=(task,),
            data_dir=_DATA.value,
            tfds_dir=_TFDS.value,
            tokenizer_dir=checkpoint,
            max_length=_MAX_LENGTH.value,
            max_train_examples=_MAX_TRAIN.value,
        )
        train = probe.extract_features(trunk, data.train["inputs"])
        test = probe.extract_features(trunk, data.test["inputs"])
        classes = num_classes(task)
        head = probe.fit_linear_probe(train, data.train["labels"][task], classes)
        out[task] = {
            "accuracy": head.accuracy(test, data.test["labels"][task]),
            "count": len(test),
            "trainable_params": trunk.out_features * classes + classes,
            "seconds": time.perf_counter() - start,
        }
        logging.info("Probe %s: %s", task, out[task])
        with open(path, "w") as f:  # after each task, so an interrupted run keeps them
            json.dump(out, f, indent=2)
    return {task: out[task] for task in _TASKS.value}


def span(values) -> str:
    """`a–b per task`, or `a per task` when all are equal."""
    low, high = min(values), max(values)
    return f"{low:,} per task" if low == high else f"{low:,}–{high:,} per task"


def render(tasks, probe, full, lora, mtl, pairs, prompt=None) -> str:
    lines = ["| method | " + " | ".join(tasks) + " | mean | trainable params | wall time |"]
    lines.append("|" + " --- |" * (len(tasks) + 4))

    def row(name, accuracy, trainable, seconds):
        cells = [f"{100 * accuracy[t]:.1f}" if t in accuracy else "–" for t in tasks]
        mean = (
            f"{100 * sum(accuracy.values()) / len(accuracy):.1f}"
            if len(accuracy) == len(tasks)
            else "–"
        )
        lines.append(f"| {name} | {' | '.join(cells)} | {mean} | {trainable} | {seconds} |")

    if probe:
        row(
            "frozen features + linear head",
            {t: v["accuracy"] for t, v in probe.items()},
            span([v["trainable_params"] for v in probe.values()]),
            f"{sum(v['seconds'] for v in probe.values()):.0f} s",
        )
    for name, runs in (
        ("full fine-tuning", full),
        (f"LoRA (r={_RANK.value})", lora),
        (f"prompt tuning ({_PROMPT_LENGTH.value} vectors)", prompt or {}),
    ):
        if runs:
            row(
                name,
                {t: r["test"][t]["accuracy"] for t, r in runs.items()},
                span([r["info"]["trainable_params"] for r in runs.values()]),
                f"{sum(r['info']['total_seconds'] for r in runs.values()):.0f} s",
            )
    if mtl:
        row(
            "multi-task fine-tuning (all tasks, one model)",
            {t: mtl["test"][t]["accuracy"] for t in tasks},
            f"{mtl['info']['trainable_params']:,} in all",
            f"{mtl['info']['total_seconds']:.0f} s",
        )
    table = "\n".join(lines)
    if not full or not (pairs or mtl):
        return table

    return table + "\n\n" + transfer_matrix(tasks, full, mtl, pairs)


def budgets(steps_full: int) -> str:
    return (
        f"Budgets: all-MiniLM-L6-v2 converted with `launch.convert`, mean pooling; sentences "
        f"truncated to {_MAX_LENGTH.value} tokens (batches cut to their longest sentence, rounded "
        f"up to 16); a seeded subset (seed 0) of {_MAX_TRAIN.value} training sentences per task; "
        f"the full test splits. Fine-tuning: {_STEPS.value} steps of {_BATCH.value} sentences per "
        f"task in every run (a pair trains {2 * _STEPS.value} steps, all tasks together "
        f"{steps_full} steps), AdamW, warm-up (10%) + cosine, global-norm clipping 1.0, dropout "
        f"0.1, peak learning rate {_LR_FULL.value:g} (full, multi-task) and {_LR_LORA.value:g} "
        f"(LoRA r={_RANK.value}, alpha={_ALPHA.value:g}, on query/key/value/attention output/"
        f"intermediate/output of every layer; heads train too), {_LR_PROMPT.value:g} (prompt "
        f"tuning: {_PROMPT_LENGTH.value} vectors initialised from random vocabulary embeddings, "
        "the trunk frozen, heads train too). Linear probe: features of the "
        "frozen trunk computed once, softmax regression (standardised features, L2 1e-3, 500 "
        "full-batch Adam steps). One seed. Wall time: whole runs (data, compilation, training, "
        "evaluation) on 2 CPU cores shared with other jobs, summed over the tasks' runs."
    )


def main(argv):
    del argv
    os.makedirs(_ROOT.value, exist_ok=True)
    import jax

    # Runs on tasks with the same number of classes compile the very same programs.
    jax.config.update("jax_compilation_cache_dir", os.path.join(_ROOT.value, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    from mtl.convert import converted_package

    checkpoint = converted_package(os.path.join(_ROOT.value, "minilm"))
    tasks, parts = list(_TASKS.value), set(_PARTS.value)
    probe = probe_run(checkpoint) if "probe" in parts else {}
    full, lora, prompt, pairs = {}, {}, {}, {}
    for part, strategy, runs in (
        ("full", "full", full),
        ("lora", "lora", lora),
        ("prompt", "prompt_tuning", prompt),
    ):
        if part in parts:
            for t in tasks:
                runs[t] = finetune_run(f"{part}_{t}", [t], strategy, checkpoint)
    mtl = finetune_run("mtl_all", tasks, "full", checkpoint) if "mtl" in parts else None
    if "pairs" in parts:
        pair_tasks = sorted(t for t in tasks if t in _PAIR_TASKS.value)
        for a, b in itertools.combinations(pair_tasks, 2):
            pairs[(a, b)] = finetune_run(f"pair_{a}+{b}", [a, b], "full", checkpoint)
    # With --norun, runs not done yet are None: left out (their cells show "–").
    full, lora, prompt, pairs = (
        {k: v for k, v in d.items() if v} for d in (full, lora, prompt, pairs)
    )
    markdown = (
        render(tasks, probe, full, lora, mtl, pairs, prompt)
        + "\n\n"
        + budgets(_STEPS.value * len(tasks))
    )
    print(markdown)
    if _README.value:
        readme.write_block(_README.value, _MARKER.value, markdown)


if __name__ == "__main__":
    entry.run(main)
