"""Leave-one-task-out few-shot results on SentEval from all-MiniLM-L6-v2: every baseline and
meta-learner of docs/rapid_adaptation.md, K examples per class, scored on the held-out task's
test split.

    python -m scripts.fewshot_text_results --root=/tmp/fewshot \\
        --senteval_dir=../shared/data/senteval --readme=docs/rapid_adaptation.md

For each held-out task T (`--held_out`, default all seven):
- the baselines (`probe`, `prototype`, `finetune`, `lora`, `setfit`, `baseline_pp`) start from
  the converted encoder with no meta-training (`mtl.runs.meta.pretrained_learner`);
- the meta-learners (`protonets`, `anil`, `maml_lora`, `imaml`, `r2d2`, `pmf`) are meta-trained
  with `configs/senteval_fewshot.py:T` (the five other tasks but one for meta-train, that one
  for meta-val) for `--meta_steps` steps, then loaded with `load_learner`;
- for each K in `--ks`, `--support_sets` support sets are drawn from T's training split
  (K sentences per class, seeded by task, K and index, the same for every method), each learner
  adapts to each (`--adapt_steps` for the baselines, the config's `eval.inner_steps` for the
  meta-learners) and labels T's test split (`--test_limit` > 0: a seeded subset of it);
- the table gives mean +- 95% CI (1.96 standard errors over the support sets) per method,
  task and K. Finished cells are kept in `ROOT/scores/TASK/METHOD.json`, so the command resumes.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import zlib

import numpy as np
from absl import flags, logging

from mtl import entry
from scripts.readme import write_block

BASELINES = {
    "probe": dict(method="finetune", finetune_lr=1e-2),
    "prototype": dict(method="protonets"),
    "baseline_pp": dict(method="finetune", finetune_head="cosine", finetune_lr=1e-2),
    "finetune": dict(method="finetune", finetune_adapt="all", finetune_lr=1e-4),
    "lora": dict(method="finetune", finetune_adapt="lora", lora_rank=8, finetune_lr=1e-3),
    "setfit": dict(method="setfit", setfit_lr=1e-4, finetune_lr=1e-2),
}
META_LEARNERS = {
    "protonets": dict(method="protonets"),
    "anil": dict(method="maml", adapt="head", head_init="zero"),
    # Second order through 5 inner steps of MiniLM: without remat, meta_batch=2 outgrew 24 GB.
    "maml_lora": dict(
        method="maml", adapt="lora", lora_rank=8, head_init="zero", inner_lr=0.1, remat=True
    ),
    # All of MiniLM adapts: the head starts at the prototypes and the rate is small (with a zero
    # head and the config's rate 0.5, the inner steps broke the encoder: 49.5% on MR at K = 16).
    "imaml": dict(method="imaml", head_init="proto", inner_lr=0.01),
    "r2d2": dict(method="r2d2"),
    "pmf": dict(method="pmf"),
}
NAMES = {
    "probe": "probe (logistic regression)",
    "prototype": "nearest prototype",
    "baseline_pp": "Baseline++ (cosine head)",
    "finetune": "full fine-tuning",
    "lora": "LoRA fine-tuning (rank 8)",
    "setfit": "SetFit-style",
    "protonets": "ProtoNets, meta-trained",
    "anil": "ANIL (MAML, head), meta-trained",
    "maml_lora": "MAML over LoRA factors, meta-trained",
    "imaml": "iMAML, meta-trained",
    "r2d2": "R2D2 (ridge head), meta-trained",
    "pmf": "P>M>F",
}

_ROOT = flags.DEFINE_string("root", "/tmp/fewshot_text", "Folder for runs and scores.")
_SENTEVAL = flags.DEFINE_string("senteval_dir", "../shared/data/senteval", "SentEval files.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "", "A converted encoder (default: MiniLM converted into ROOT/minilm)."
)
_HELD_OUT = flags.DEFINE_list("held_out", [], "Held-out tasks (default: all seven).")
_KS = flags.DEFINE_list("ks", ["4", "8", "16"], "Support sentences per class.")
_SETS = flags.DEFINE_integer("support_sets", 10, "Support sets drawn per task and K.")
_TEST_LIMIT = flags.DEFINE_integer("test_limit", 0, "Test sentences scored (0: the whole split).")
_METHODS = flags.DEFINE_list(
    "methods", [*BASELINES, *META_LEARNERS], "Rows, from the baselines and meta-learners."
)
_META_STEPS = flags.DEFINE_integer("meta_steps", 500, "Meta-training steps.")
_META_BATCH = flags.DEFINE_integer("meta_batch", 8, "Meta-training episodes per meta-step.")
_ADAPT_STEPS = flags.DEFINE_integer("adapt_steps", 20, "The baselines' Adam steps per support set.")
_README = flags.DEFINE_string("readme", "", "Page to write the table into (between markers).")
_MARKER = flags.DEFINE_string(
    "marker", "fewshot-text", "The table goes between <!-- MARKER:begin/end --> lines."
)


def support_indices(labels: np.ndarray, k: int, index: int, task: str) -> np.ndarray:
    """K example indices per class of `labels`, seeded by (task, K, index); a class with fewer
    than K examples gives all it has."""
    rng = np.random.default_rng([zlib.crc32(task.encode()), k, index])
    chosen = [
        rng.choice(np.flatnonzero(labels == c), min(k, int(np.sum(labels == c))), replace=False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def score(learner, pool, test, k: int, sets: int, task: str, steps: int | None) -> list[float]:
    """Test accuracy of `learner` adapted to each of `sets` K-shot support sets from `pool`."""
    sentences, labels = pool
    out = []
    for index in range(sets):
        rows = support_indices(labels, k, index, task)
        adapted = learner.adapt([sentences[i] for i in rows], labels[rows], steps=steps)
        out.append(adapted.evaluate(*test))
    return out


def mean_ci(values: list[float]) -> str:
    if len(values) < 2:
        return f"{100 * values[0]:.1f}"
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return f"{100 * statistics.mean(values):.1f} +- {100 * half:.1f}"


def base_config(task: str, checkpoint: str):
    from configs import senteval_fewshot
    from mtl.transfer import restore

    config = senteval_fewshot.get_config(task)
    config.init.checkpoint = checkpoint
    restore.take_architecture(config.model, checkpoint)
    config.model.bert.update(dropout=0.0, attention_dropout=0.0)
    config.data.senteval_dir = _SENTEVAL.value
    config.data.tfds_dir = os.path.join(_ROOT.value, "tfds")
    return config


def learner_for(method: str, task: str, checkpoint: str):
    """`(learner, adapt steps)`: a baseline from the encoder, or a meta-trained one."""
    from mtl.runs import meta

    config = base_config(task, checkpoint)
    if method in BASELINES:
        config.meta.update(BASELINES[method])
        config.num_steps = 0
        return meta.pretrained_learner(config), _ADAPT_STEPS.value
    config.meta.update(META_LEARNERS[method])
    config.num_steps = _META_STEPS.value
    config.meta.meta_batch = _META_BATCH.value
    # The table scores the test split itself: the run's own episode evaluation is kept to one
    # batch at one K (it does not change the learner: no checkpoint is chosen on it).
    config.eval.update(episodes=config.eval.batch, val_episodes=20, shots=(8,))
    # A changed budget or learner config trains afresh.
    budget = f"{_META_STEPS.value}x{_META_BATCH.value}_{learner_tag(method)}"
    workdir = os.path.join(_ROOT.value, "runs", f"{method}_{task}_{budget}")
    if not os.path.exists(os.path.join(workdir, "results.json")):
        meta.train(config, workdir)
    return meta.load_learner(workdir), None


def learner_tag(method: str) -> str:
    """A short hash of the method's config overrides: runs and scores of an edited entry in
    BASELINES / META_LEARNERS are not reused."""
    overrides = {**BASELINES, **META_LEARNERS}[method]
    return f"{zlib.crc32(json.dumps(overrides, sort_keys=True).encode()):08x}"


def task_splits(task: str):
    from mtl.data import senteval

    splits = senteval.load_senteval(task, _SENTEVAL.value, os.path.join(_ROOT.value, "tfds"))
    test = senteval.subsample(*splits["test"], _TEST_LIMIT.value, 0, task)
    return splits["train"], test


def scores_for(method: str, task: str, checkpoint: str) -> dict[str, list[float]]:
    """`{K: accuracies}` of one method on one held-out task, computed once and kept."""
    path = os.path.join(_ROOT.value, "scores", task, f"{method}.json")
    wanted = {"ks": _KS.value, "sets": _SETS.value, "test_limit": _TEST_LIMIT.value,
              "learner": learner_tag(method)}  # fmt: skip
    # Only the steps the method uses: a baseline's scores stand whatever --meta_steps says.
    if method in BASELINES:
        wanted["adapt_steps"] = _ADAPT_STEPS.value
    else:
        wanted["meta_steps"] = _META_STEPS.value
        wanted["meta_batch"] = _META_BATCH.value
    if os.path.isfile(path):
        with open(path) as f:
            kept = json.load(f)
        if kept["budget"] == wanted:
            return kept["scores"]
    learner, steps = learner_for(method, task, checkpoint)
    pool, test = task_splits(task)
    scores = {}
    for k in _KS.value:
        scores[k] = score(learner, pool, test, int(k), _SETS.value, task, steps)
        logging.info("%s on %s, K=%s: %s", method, task, k, mean_ci(scores[k]))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"budget": wanted, "scores": scores}, f, indent=1)
    return scores


def table(results: dict[str, dict[str, dict[str, list[float]]]], tasks: list[str]) -> str:
    lines = []
    for k in _KS.value:
        lines += [f"K = {k} per class:", "", f"| method | {' | '.join(tasks)} |",
                  "| --- |" + " --- |" * len(tasks)]  # fmt: skip
        for method, per_task in results.items():
            cells = [mean_ci(per_task[t][k]) for t in tasks]
            lines.append(f"| {NAMES[method]} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv):
    del argv
    from configs.senteval_fewshot import TASKS
    from mtl.convert import converted_package

    unknown = sorted(set(_METHODS.value) - set(NAMES))
    if unknown:
        raise SystemExit(f"Unknown --methods {unknown}; choose from {sorted(NAMES)}.")
    tasks = _HELD_OUT.value or list(TASKS)
    checkpoint = _CHECKPOINT.value or converted_package(os.path.join(_ROOT.value, "minilm"))
    results = {m: {t: scores_for(m, t, checkpoint) for t in tasks} for m in _METHODS.value}
    test = "whole test split" if _TEST_LIMIT.value <= 0 else f"{_TEST_LIMIT.value} test sentences"
    budgets = [f"{_SETS.value} support sets per task and K", test]
    if any(m in BASELINES for m in _METHODS.value):
        budgets.append(f"baselines {_ADAPT_STEPS.value} Adam steps per support set")
    if any(m in META_LEARNERS for m in _METHODS.value):
        budgets.append(f"meta-learners {_META_STEPS.value} meta-steps of {_META_BATCH.value} "
                       "episodes, `configs/senteval_fewshot.py`")  # fmt: skip
    text = table(results, tasks) + f"\nBudgets: {'; '.join(budgets)}."
    print(text)
    if _README.value:
        write_block(_README.value, _MARKER.value, text)


if __name__ == "__main__":
    entry.run(main)
