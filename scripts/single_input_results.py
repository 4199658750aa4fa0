"""Omniglot single-input problem (alphabet, character, rotation on every image): weighting
methods and architectures against single-task models, over seeds.

Trains, for every seed, one single-task model per task, one multi-task model per weighting
method (hard sharing), one per architecture (equal weights) and one per architecture and method
named in `--combinations` (`architecture:method`), all from
configs/omniglot_single_input.py with the same steps, trunk and batch; then prints a markdown
table: per-task test accuracy and Delta-m against the single-task models (mean +- standard
deviation over seeds), and whether each setting's Delta-m differs from equal weighting with
hard sharing beyond noise (Welch's t-test, p < 0.05). Every run lives in
`<root>/<setting>_seed<k>`; finished runs are reused, so the script can be stopped and started
again.

    .venv/bin/python -m scripts.single_input_results --root=/tmp/single_input \
        --data_dir=../shared/data/omniglot --num_steps=1000 --seeds=0,1,2
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence

import ml_collections

from configs import omniglot_single_input
from mtl.compare import delta_m

TASKS = omniglot_single_input.TASKS
BASELINE = "equal / hps"


def run(root: str, name: str, seed: int, overrides: dict, single_task: str = "") -> dict:
    """Trains (or reuses) one run; returns `{task: accuracy}` and its wall time."""
    from mtl.runs import supervised

    workdir = os.path.join(root, f"{name}_seed{seed}")
    summary = os.path.join(workdir, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            return json.load(f)
    config = omniglot_single_input.get_config()
    config.seed = seed
    config.update_from_flattened_dict(overrides)
    if single_task:
        config.tasks = ml_collections.ConfigDict({single_task: config.tasks[single_task].to_dict()})
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


def table(single: dict[str, list[dict]], multi: dict[str, list[dict]]) -> str:
    """Markdown: one row per setting; accuracy in percent and Delta-m, mean +- std over seeds."""
    baseline = {t: {"accuracy": statistics.fmean(r["accuracy"][t] for r in single[t])}
                for t in TASKS}  # fmt: skip
    deltas = {
        name: [delta_m({t: {"accuracy": r["accuracy"][t]} for t in TASKS}, baseline) for r in runs]
        for name, runs in multi.items()
    }
    lines = [
        "| setting | " + " | ".join(f"{t} (%)" for t in TASKS)
        + " | Delta-m (%) | differs from equal / hps | s per run |",
        "|" + " --- |" * (len(TASKS) + 4),
    ]  # fmt: skip
    cells = [_mean_std([r["accuracy"][t] for r in single[t]], 100) for t in TASKS]
    wall = statistics.fmean(r["wall_seconds"] for t in TASKS for r in single[t])
    lines.append(f"| single-task | {' | '.join(cells)} | 0 | | {wall:.0f} (each) |")
    for name, runs in multi.items():
        cells = [_mean_std([r["accuracy"][t] for r in runs], 100) for t in TASKS]
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
    common = {
        "num_steps": flags.num_steps,
        "batch_size": flags.batch_size,
        "model.conv4.filters": flags.filters,
        "optimizer.learning_rate": flags.learning_rate,
        "data.data_dir": flags.data_dir,
        "data.tfds_dir": flags.tfds_dir,
        "log_every": 100,
    }
    single = {t: [run(root, f"single_{t}", s, common, single_task=t) for s in seeds] for t in TASKS}
    multi = {}
    for method in flags.methods:
        name = f"{method} / hps"
        multi[name] = [run(root, f"{method}_hps", s, {**common, "weighting.name": method})
                       for s in seeds]  # fmt: skip
    for architecture in flags.architectures:
        settings = {**common, "model.architecture": architecture}
        multi[f"equal / {architecture}"] = [
            run(root, f"equal_{architecture}", s, settings) for s in seeds
        ]
    for combination in flags.combinations:
        architecture, method = parse_combination(combination)
        settings = {**common, "model.architecture": architecture, "weighting.name": method}
        multi[f"{method} / {architecture}"] = [
            run(root, f"{method}_{architecture}", s, settings) for s in seeds
        ]
    text = table(single, multi)
    print(text)
    if flags.out:
        with open(flags.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    # Flags only when run: tests import scripts beside others that define the same names.
    from absl import flags as absl_flags

    from mtl import entry

    absl_flags.DEFINE_string("root", "/tmp/single_input", "Where the runs live.")
    absl_flags.DEFINE_string("data_dir", None, "Omniglot zips ($MTL_OMNIGLOT_DIR if unset).")
    absl_flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS default if unset).")
    absl_flags.DEFINE_integer("num_steps", 1000, "Train steps of every run.")
    absl_flags.DEFINE_integer("batch_size", 64, "Global batch.")
    absl_flags.DEFINE_integer("filters", 32, "conv4 filters.")
    absl_flags.DEFINE_float("learning_rate", 3e-3, "Adam's learning rate (cosine schedule).")
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
