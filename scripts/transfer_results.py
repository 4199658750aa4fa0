"""Transfer-learning results on Omniglot, each method against its plain baseline.

    .venv/bin/python -m scripts.transfer_results --data_dir=../shared/data/omniglot \
        --out=/tmp/transfer_results.md

Every experiment is a run of the engine's own trainers (`mtl.runs`) through its configs, each
in a subdirectory of `--workdir` (a temporary directory, deleted at the end, when unset); the
numbers come from the runs' `Result`s. With `--workdir`, a stopped script (SIGTERM) resumes
with the same command, and finished runs are not trained again. Drawers 16-20 are the test
set everywhere, as in Omniglot-alphabets. Every run overrides its config's step count, batch
size and (to one budget for all) the learning-rate schedule: constant Adam at lr 1e-3.

  * EWC (`configs/omniglot_sequential.py`, `trainer="sequential"`): an MLP learns task A (the
    characters of one alphabet), then task B (another alphabet, new head); accuracy on A after
    B for each `sequential.ewc_strength`. Phase 0 does not depend on the strength: the runs
    after the first start from a copy of its `phase0`.
  * Progressive nets (`configs/omniglot_progressive.py`, `trainer="progressive"`): column 1
    trained on A, a new column with laterals on B; against a fresh column on B (a progressive
    run with B alone) and fine-tuning on B (the sequential run without EWC, which forgets A).
  * DANN (`configs/omniglot_dann.py`, `trainer="dann"`): which alphabet is this (8-way,
    `--dann_task`; the data source's `pooled_tasks` option)? Source: the images; target: the
    same images transformed (`--dann_target`, the data source's `target_domain` option),
    unlabelled in training. Source only (`dann.scale=0`) against domain-adversarial
    (`--dann_scales`: constant gradient-reversal scales, where the private loop this script
    used before followed Ganin's schedule; the domain head is the trainer's linear one).
  * Distillation (`configs/omniglot_pooled.py:character` as the teacher's config,
    `configs/omniglot_distill.py` as the student's, `trainer="distill"`): all 242 characters;
    teacher conv4 (32 filters), student a small MLP, trained on the labels only
    (`distill.alpha=0`) or on the teacher's softened outputs.
Every number printed comes from these runs; budgets are the flags below.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import ml_collections
from absl import app, flags, logging

from configs import (
    omniglot_dann,
    omniglot_distill,
    omniglot_mtl,
    omniglot_pooled,
    omniglot_progressive,
    omniglot_sequential,
)
from mtl import entry
from mtl.data.omniglot_domains import DOMAINS
from mtl.runs import get_trainer
from mtl.train.experiment import Result

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Omniglot zips ($MTL_OMNIGLOT_DIR if unset).")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "TFDS data dir.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the runs go (resumable); a temporary directory when unset."
)
_STEPS = flags.DEFINE_integer("num_steps", 1500, "Train steps of every phase.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_TASK_A = flags.DEFINE_string("task_a", "Japanese_(katakana)", "First alphabet (EWC, PNN).")
_TASK_B = flags.DEFINE_string("task_b", "Sanskrit", "Second alphabet (EWC, PNN).")
_EWC = flags.DEFINE_list("ewc_strengths", ["0", "100", "1000", "10000"], "EWC lambdas.")
_ONLY = flags.DEFINE_list("only", ["ewc", "progressive", "dann", "distill"], "Experiments.")
_TARGET = flags.DEFINE_enum("dann_target", "negative", list(DOMAINS), "DANN's target domain.")
_DANN_TASK = flags.DEFINE_string(
    "dann_task", "alphabet", "DANN's task: alphabet, character or one alphabet's name."
)
_DANN_SCALES = flags.DEFINE_list(
    "dann_scales", ["0.1", "0.3", "1"], "DANN's gradient-reversal scales, one run each."
)
_DANN_TRUNK = flags.DEFINE_enum("dann_trunk", "conv4", ["conv4", "mlp"], "DANN's trunk.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown tables to this file.")
_JSON = flags.DEFINE_string("json", None, "Also write the raw numbers to this file.")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (
    _DATA_DIR,
    _TFDS_DIR,
    _WORKDIR,
    _STEPS,
    _BATCH,
    _TASK_A,
    _TASK_B,
    _EWC,
    _ONLY,
    _TARGET,
    _DANN_TASK,
    _DANN_SCALES,
    _DANN_TRUNK,
    _OUT,
    _JSON,
):
    flags.FLAGS[_holder.name].allow_override = True

HIDDEN = (256, 256)  # the MLPs of EWC and the progressive columns (their configs' default)
STUDENT_HIDDEN = (128,)  # configs/omniglot_distill.py's student
TEACHER_FILTERS = 32
TASK = "character"  # distillation's task: which of all 242 characters


class Stopped(Exception):
    """A run was asked to stop (SIGTERM); the same command with the same --workdir resumes."""


def configured(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with this script's budget and data paths."""
    config.update_from_flattened_dict(
        {
            "num_steps": _STEPS.value,
            "batch_size": _BATCH.value,
            "optimizer.schedule": "constant",
            "data.data_dir": _DATA_DIR.value,
            "data.tfds_dir": _TFDS_DIR.value,
        }
    )
    return config


def train(config: ml_collections.ConfigDict, workdir: str) -> Result:
    """The run of `config` by its trainer in `workdir` (resumed or kept if already there)."""
    logging.info("%s run in %s", config.trainer, workdir)
    result = get_trainer(config.trainer)(config, workdir)
    if result.stopped:
        raise Stopped(workdir)
    return result


def accuracy(metrics: dict, task: str) -> float:
    return float(metrics[task]["accuracy"])


# --- EWC --------------------------------------------------------------------------------------


def sequential_run(root: str, strength: float, phase0_from: str | None = None) -> dict:
    """The sequential A-then-B run with EWC `strength`: its `Result.metrics["sequential"]`."""
    config = configured(omniglot_sequential.get_config(f"{_TASK_A.value},{_TASK_B.value}"))
    config.sequential.ewc_strength = strength
    workdir = os.path.join(root, f"sequential_ewc{strength:g}")
    start = os.path.join(workdir, "phase0")
    if phase0_from and not os.path.exists(start):
        # Phase 0 (task A alone) is the same run for every strength: start from its copy.
        shutil.copytree(os.path.join(phase0_from, "phase0"), start)
    return train(config, workdir)["sequential"]


def run_ewc(root: str) -> dict:
    rows, first = [], None
    for strength in map(float, _EWC.value):
        report = sequential_run(root, strength, first)
        first = first or os.path.join(root, f"sequential_ewc{strength:g}")
        a, b = _TASK_A.value, _TASK_B.value
        rows.append(
            {
                "ewc_strength": strength,
                "acc_A_after_A": accuracy(report["after_phase"][0], a),
                "acc_A_after_B": accuracy(report["final"], a),
                "acc_B": accuracy(report["final"], b),
            }
        )
    return {"rows": rows}


# --- progressive nets -------------------------------------------------------------------------


def run_progressive(root: str) -> dict:
    a, b = _TASK_A.value, _TASK_B.value
    both = train(configured(omniglot_progressive.get_config(f"{a},{b}")), f"{root}/progressive")
    report = both["progressive"]
    fresh = train(configured(omniglot_progressive.get_config(b)), f"{root}/progressive_fresh_b")
    # Fine-tuning = the sequential run without EWC (resumed as finished if the EWC table ran it).
    tuned = sequential_run(root, 0.0)
    return {
        "column1_bit_identical": report["column1_bit_identical"],
        "acc_A_column1": accuracy(report["after_phase"][0], a),
        "acc_A_after_B_progressive": accuracy(report["final"], a),
        "acc_A_after_B_finetune": accuracy(tuned["final"], a),
        "acc_B_progressive": accuracy(report["final"], b),
        "acc_B_fresh_column": accuracy(fresh["test"], b),
        "acc_B_finetune": accuracy(tuned["final"], b),
    }


# --- DANN -------------------------------------------------------------------------------------


def run_dann(root: str) -> dict:
    """`rows`: source only (scale 0), then one DANN run per scale of `--dann_scales`."""
    rows = []
    for scale in [0.0, *map(float, _DANN_SCALES.value)]:
        config = configured(omniglot_dann.get_config(f"{_DANN_TASK.value},{_TARGET.value}"))
        config.model.trunk = _DANN_TRUNK.value
        config.model.mlp.hidden = HIDDEN
        config.dann.scale = scale
        metrics = train(config, f"{root}/dann_scale{scale:g}")["test"]
        source, target = config.dann.source, config.dann.target
        rows.append(
            {
                "scale": scale,
                "source_test": accuracy(metrics, source),
                "target_test": accuracy(metrics, f"{target} (by the {source} head)"),
                "domain_test": accuracy(metrics, "domain"),
            }
        )
    return {"rows": rows}


def dann_classes() -> int:
    task = _DANN_TASK.value
    return omniglot_pooled.CLASSES.get(task) or omniglot_mtl.ALPHABETS.get(task, 0)


# --- distillation -----------------------------------------------------------------------------


def run_distill(root: str, temperature=4.0, alpha=0.9) -> dict:
    teacher = configured(omniglot_pooled.get_config(TASK))
    teacher.model.conv4.filters = TEACHER_FILTERS
    teacher_dir = f"{root}/distill_teacher"
    result = {
        "teacher": accuracy(train(teacher, teacher_dir)["test"], TASK),
        "temperature": temperature,
        "alpha": alpha,
    }
    for name, weight in (("student_labels_only", 0.0), ("student_distilled", alpha)):
        student = configured(omniglot_pooled.use_pooled_task(omniglot_distill.get_config(), TASK))
        student.model.mlp.hidden = STUDENT_HIDDEN
        student.teacher.workdir = teacher_dir
        student.distill.update(temperature=temperature, alpha=weight)
        result[name] = accuracy(train(student, f"{root}/distill_{name}")["test"], TASK)
    return result


# --- tables -----------------------------------------------------------------------------------


def tables(results: dict) -> str:
    budget = f"{_STEPS.value} Adam steps (lr 1e-3, constant) per run, batch {_BATCH.value}"
    out = []
    if "ewc" in results:
        out += [
            f"EWC (`trainer=sequential`): task A = {_TASK_A.value}, then task B = "
            f"{_TASK_B.value}; MLP {HIDDEN}; {budget}; Fisher of A on the shared trunk "
            "(labels sampled from the model).",
            "",
            "| EWC lambda | acc. A after A | acc. A after B | acc. B |",
            "| --- | --- | --- | --- |",
        ]
        for r in results["ewc"]["rows"]:
            out.append(
                f"| {r['ewc_strength']:g} | {r['acc_A_after_A']:.3f} | "
                f"{r['acc_A_after_B']:.3f} | {r['acc_B']:.3f} |"
            )
        out.append("")
    if "progressive" in results:
        p = results["progressive"]
        out += [
            f"Progressive nets (`trainer=progressive`): A = {_TASK_A.value}, B = "
            f"{_TASK_B.value}; columns MLP {HIDDEN}; {budget}. Column 1 bit-identical after "
            f"training column 2: {p['column1_bit_identical']}.",
            "",
            "| setting | acc. A after B | acc. B |",
            "| --- | --- | --- |",
            f"| progressive (column 2 with laterals) | {p['acc_A_after_B_progressive']:.3f} | "
            f"{p['acc_B_progressive']:.3f} |",
            f"| fresh column on B | {p['acc_A_column1']:.3f} (column 1 kept) | "
            f"{p['acc_B_fresh_column']:.3f} |",
            f"| fine-tune on B (sequential, no EWC) | {p['acc_A_after_B_finetune']:.3f} | "
            f"{p['acc_B_finetune']:.3f} |",
            "",
        ]
    if "dann" in results:
        out += [
            f"DANN (`trainer=dann`): task {_DANN_TASK.value} ({dann_classes()}-way); "
            f"source = images, target = {DOMAINS[_TARGET.value]}, unlabelled; trunk "
            f"{_DANN_TRUNK.value}, linear domain head behind a constant gradient-reversal "
            f"scale; {budget}.",
            "",
            "| training | source test acc. | target test acc. | domain test acc. |",
            "| --- | --- | --- | --- |",
        ]
        for r in results["dann"]["rows"]:
            label = f"DANN, scale {r['scale']:g}" if r["scale"] else "source only"
            out.append(
                f"| {label} | {r['source_test']:.3f} | {r['target_test']:.3f} | "
                f"{r['domain_test']:.3f} |"
            )
        out.append("")
    if "distill" in results:
        k = results["distill"]
        out += [
            f"Distillation (`trainer=distill`): {omniglot_pooled.CLASSES[TASK]} characters; "
            f"teacher conv4 ({TEACHER_FILTERS} filters), student MLP {STUDENT_HIDDEN}; "
            f"T = {k['temperature']:g}, alpha = {k['alpha']:g}; {budget}.",
            "",
            "| model | test acc. |",
            "| --- | --- |",
            f"| teacher conv4 | {k['teacher']:.3f} |",
            f"| student, labels only | {k['student_labels_only']:.3f} |",
            f"| student, distilled | {k['student_distilled']:.3f} |",
            "",
        ]
    return "\n".join(out)


def main(argv):
    del argv
    runs = {
        "ewc": run_ewc,
        "progressive": run_progressive,
        "dann": run_dann,
        "distill": run_distill,
    }
    unknown = [name for name in _ONLY.value if name not in runs]
    if unknown:
        raise app.UsageError(f"--only names unknown experiment(s) {', '.join(unknown)}.")
    root = _WORKDIR.value or tempfile.mkdtemp(prefix="transfer_results_")
    results = {}
    try:
        for name in _ONLY.value:
            start = time.time()
            results[name] = runs[name](root)  # run names differ: EWC's lambda 0 run is reused
            results[name + "_seconds"] = time.time() - start
            print(f"{name}: {time.time() - start:.0f}s", flush=True)
    except Stopped as stopped:
        print(f"Stopped in {stopped}; the same command with --workdir={root} resumes.")
        return
    finally:
        if _WORKDIR.value is None:
            shutil.rmtree(root, ignore_errors=True)
    text = tables(results)
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    entry.run(main)
