"""Single-input multi-task problems: weighting methods and architectures against single-task
models, over seeds.

Two problems (`--problem`), every example labelled for every task (the `mixed` layout):
- `omniglot`: alphabet, character and rotation of every image (configs/omniglot_single_input.py,
  a conv4 trunk from scratch);
- `trec`: the coarse (6) and fine (50) question type of every TREC question, a converted
  MiniLM fine-tuned on both (configs/text_table_finetune.py over the tables that
  scripts/trec_single_input.py writes from SentEval's TREC folder; `--checkpoint`, or MiniLM
  converted into ROOT/minilm).

Trains, for every seed, one single-task model per task, one multi-task model per weighting
method (hard sharing), one per architecture (equal weights) and one per architecture and method
named in `--combinations` (`architecture:method`), all with the same steps, trunk and batch;
then prints a markdown table: per-task test accuracy and Delta-m against the single-task models
(mean +- standard deviation over seeds), and whether each setting's Delta-m differs from equal
weighting with hard sharing beyond noise (Welch's t-test, p < 0.05). Every run lives in
`<root>/<setting>_seed<k>`; finished runs are reused, so the script can be stopped and started
again.

    .venv/bin/python -m scripts.single_input_results --root=/tmp/single_input \
        --data_dir=../shared/data/omniglot --num_steps=1000 --seeds=0,1,2
    .venv/bin/python -m scripts.single_input_results --problem=trec --root=/tmp/trec \
        --data_dir=../shared/data/senteval --num_steps=300 --methods=equal,pcgrad \
        --architectures=
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

import ml_collections

from configs import omniglot_single_input
from mtl.compare import delta_m

TASKS = omniglot_single_input.TASKS
TREC_TASKS = ("coarse", "fine")
BASELINE = "equal / hps"


def omniglot_config(flags) -> ml_collections.ConfigDict:
    """configs/omniglot_single_input.py with the script's trunk width, rate and data flags."""
    config = omniglot_single_input.get_config()
    config.update_from_flattened_dict({
        "model.conv4.filters": flags.filters,
        "optimizer.learning_rate": flags.learning_rate or 3e-3,
        "data.data_dir": flags.data_dir,
        "data.tfds_dir": flags.tfds_dir,
    })  # fmt: skip
    return config


def trec_config(flags) -> ml_collections.ConfigDict:
    """configs/text_table_finetune.py over TREC's `text,coarse,fine` tables (written into
    ROOT/trec), fine-tuning the checkpoint's encoder with its own shape."""
    from configs import text_table_finetune
    from mtl.convert import converted_package
    from mtl.data import senteval_tfds as st
    from mtl.transfer import restore
    from scripts import trec_single_input

    paths = trec_single_input.write_tables(
        flags.data_dir, flags.tfds_dir, os.path.join(flags.root, "trec")
    )
    config = text_table_finetune.get_config(f"{paths['train']},{','.join(TREC_TASKS)}")
    config.data.test = paths["test"]
    # Every class declared: a fine class missing from the training table keeps its index.
    config.data.classes = {"coarse": st.TREC_COARSE, "fine": st.TREC_FINE}
    for task, names in config.data.classes.items():
        config.tasks[task].num_outputs = len(names)
    config.data.max_length = flags.max_length
    config.init.checkpoint = flags.checkpoint or converted_package(
        os.path.join(flags.root, "minilm")
    )
    restore.take_architecture(config.model, config.init.checkpoint)
    config.optimizer.learning_rate = flags.learning_rate or config.optimizer.learning_rate
    return config


# problem -> (its tasks, `flags -> base config`)
PROBLEMS: dict[str, tuple[Sequence[str], Callable]] = {
    "omniglot": (TASKS, omniglot_config),
    "trec": (TREC_TASKS, trec_config),
}


def only_task(config: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
    """`config` for a single-task model of `task`: its head, and (a table) its label column."""
    config.tasks = ml_collections.ConfigDict({task: config.tasks[task].to_dict()})
    if "label_columns" in config.data:
        config.data.label_columns = (task,)
        if config.data.get("classes"):
            config.data.classes = {task: config.data.classes[task]}
    return config


def run(
    root: str,
    name: str,
    seed: int,
    base: Callable[[], ml_collections.ConfigDict],
    overrides: dict,
    single_task: str = "",
) -> dict:
    """Trains (or reuses) one run of `base()` with `overrides`; returns `{task: accuracy}`
    and its wall time."""
    from mtl.runs import supervised

    workdir = os.path.join(root, f"{name}_seed{seed}")
    summary = os.path.join(workdir, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            return json.load(f)
    config = base()
    config.seed = seed
    config.update_from_flattened_dict(overrides)
    if single_task:
        config = only_task(config, single_task)
    start = time.time()
    result = supervised.train(config, workdir)
    if result.stopped:  # SIGTERM: the same command resumes it
        raise SystemExit(0)
    out = {
        "accuracy": {t: result["test"][t]["accuracy"] for t in config.tasks},
        "wall_seconds": time.time() - start,
    }
    with open(summary, "w") as f:
        json.dump(out, f, indent=2)
    return out


def _mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    mean = statistics.fmean(values) * scale
    spread = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} +- {spread:.{digits}f}"


def welch_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) of samples `a` and `b`."""
    from jax.scipy.special import betainc

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return 0.0 if statistics.fmean(a) != statistics.fmean(b) else 1.0
    t = (statistics.fmean(a) - statistics.fmean(b)) / (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    # P(|T_df| > |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2), the regularised incomplete beta.
    return float(betainc(df / 2, 0.5, df / (df + t * t)))


def beyond_noise(a: Sequence[float], b: Sequence[float]) -> str:
    """Welch's t-test of two samples: "yes (p=...)" when p < 0.05, else "no (p=...)"."""
    if len(a) < 2 or len(b) < 2:
        return "n/a"
    p = welch_p_value(a, b)
    return f"{'yes' if p < 0.05 else 'no'} (p={p:.2f})"


def table(
    single: dict[str, list[dict]], multi: dict[str, list[dict]], tasks: Sequence[str] = TASKS
) -> str:
    """Markdown: one row per setting; accuracy in percent and Delta-m, mean +- std over seeds."""
    baseline = {t: {"accuracy": statistics.fmean(r["accuracy"][t] for r in single[t])}
                for t in tasks}  # fmt: skip
    deltas = {
        name: [delta_m({t: {"accuracy": r["accuracy"][t]} for t in tasks}, baseline) for r in runs]
        for name, runs in multi.items()
    }
    lines = [
        "| setting | " + " | ".join(f"{t} (%)" for t in tasks)
        + " | Delta-m (%) | differs from equal / hps | s per run |",
        "|" + " --- |" * (len(tasks) + 4),
    ]  # fmt: skip
    cells = [_mean_std([r["accuracy"][t] for r in single[t]], 100) for t in tasks]
    wall = statistics.fmean(r["wall_seconds"] for t in tasks for r in single[t])
    lines.append(f"| single-task | {' | '.join(cells)} | 0 | | {wall:.0f} (each) |")
    for name, runs in multi.items():
        cells = [_mean_std([r["accuracy"][t] for r in runs], 100) for t in tasks]
        noise = "" if name == BASELINE else beyond_noise(deltas[name], deltas[BASELINE])
        wall = statistics.fmean(r["wall_seconds"] for r in runs)
        lines.append(
            f"| {name} | {' | '.join(cells)} | {_mean_std(deltas[name], digits=2)} | {noise} "
            f"| {wall:.0f} |"
        )
    return "\n".join(lines)


def parse_combination(text: str) -> tuple[str, str]:
    """`"mtan:pcgrad"` -> `("mtan", "pcgrad")`; a clear error for anything else."""
    architecture, sep, method = text.partition(":")
    if not (sep and architecture and method):
        raise ValueError(
            f"--combinations: {text!r} is not architecture:method (for example mtan:pcgrad)."
        )
    return architecture, method


def main(argv):
    del argv
    flags = FLAGS
    root = flags.root
    seeds = [int(s) for s in flags.seeds]
    tasks, problem_config = PROBLEMS[flags.problem]
    if flags.problem == "trec" and (flags.architectures or flags.combinations):
        raise SystemExit(
            "--problem=trec fine-tunes a pretrained trunk, and the architectures start from fresh "
            "weights (see mtl/runs/supervised.py check_architecture): pass --architectures= and "
            "no --combinations."
        )
    os.makedirs(root, exist_ok=True)
    base_config = problem_config(flags)
    base = lambda: copy.deepcopy(base_config)  # a fresh copy per run
    common = {
        "num_steps": flags.num_steps,
        "batch_size": flags.batch_size,
        "log_every": 100,
    }
    single = {
        t: [run(root, f"single_{t}", s, base, common, single_task=t) for s in seeds] for t in tasks
    }
    multi = {}
    for method in flags.methods:
        name = f"{method} / hps"
        multi[name] = [run(root, f"{method}_hps", s, base, {**common, "weighting.name": method})
                       for s in seeds]  # fmt: skip
    for architecture in flags.architectures:
        settings = {**common, "model.architecture": architecture}
        multi[f"equal / {architecture}"] = [
            run(root, f"equal_{architecture}", s, base, settings) for s in seeds
        ]
    for combination in flags.combinations:
        architecture, method = parse_combination(combination)
        settings = {**common, "model.architecture": architecture, "weighting.name": method}
        multi[f"{method} / {architecture}"] = [
            run(root, f"{method}_{architecture}", s, base, settings) for s in seeds
        ]
    text = table(single, multi, tasks)
    print(text)
    if flags.out:
        with open(flags.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    # Flags only when run: tests import scripts beside others that define the same names.
    from absl import flags as absl_flags

    from mtl import entry

    absl_flags.DEFINE_enum("problem", "omniglot", list(PROBLEMS), "The single-input problem.")
    absl_flags.DEFINE_string("root", "/tmp/single_input", "Where the runs live.")
    absl_flags.DEFINE_string(
        "data_dir", None, "Omniglot zips ($MTL_OMNIGLOT_DIR if unset), or the SentEval folder."
    )
    absl_flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS default if unset).")
    absl_flags.DEFINE_integer("num_steps", 1000, "Train steps of every run.")
    absl_flags.DEFINE_integer("batch_size", 64, "Global batch.")
    absl_flags.DEFINE_integer("filters", 32, "conv4 filters (omniglot).")
    absl_flags.DEFINE_float(
        "learning_rate", None, "Adam's learning rate (default: omniglot 3e-3, trec the config's)."
    )
    absl_flags.DEFINE_integer(
        "max_length", 32, "Tokens per question, special ones included (trec)."
    )
    absl_flags.DEFINE_string(
        "checkpoint", "", "A converted text encoder (trec; default: MiniLM into ROOT/minilm)."
    )
    absl_flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: one run per setting and seed.")
    absl_flags.DEFINE_list(
        "methods",
        ["equal", "uncertainty", "dwa", "rlw", "famo", "stch", "db_mtl", "gradnorm", "pcgrad",
         "mgda", "cagrad", "nash_mtl", "aligned_mtl", "imtl_g", "upgrad", "fairgrad"],
        "Weighting methods, each with hard sharing.",
    )  # fmt: skip
    absl_flags.DEFINE_list(
        "architectures",
        ["mmoe", "dselect_k", "cgc", "cross_stitch", "mtan"],
        "Architectures, each with equal weights.",
    )
    absl_flags.DEFINE_list(
        "combinations", [], "architecture:method pairs, e.g. mtan:pcgrad,mmoe:upgrad."
    )
    absl_flags.DEFINE_string("out", None, "Also write the markdown table to this file.")
    FLAGS = absl_flags.FLAGS
    entry.run(main)
