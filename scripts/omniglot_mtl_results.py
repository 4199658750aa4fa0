"""Omniglot alphabets: multi-task weightings against one single-task model per alphabet.

Trains one single-task model per alphabet and one multi-task model per weighting method, all
with the same config (configs/omniglot_mtl.py) and number of steps, then prints a markdown
table of per-task test accuracy and Delta-m against the single-task models. Each run lives in
`<root>/<name>`; finished runs are reused, so the script can be stopped and started again.

    .venv/bin/python -m scripts.omniglot_mtl_results --root=/tmp/omniglot_mtl_results \
        --data_dir=../shared/data/omniglot --num_steps=2000
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from configs import omniglot_mtl, omniglot_rotation
from mtl import entry
from mtl.compare import delta_m
from mtl.runs import supervised

_ROOT = flags.DEFINE_string("root", "/tmp/omniglot_mtl_results", "Where the runs live.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Omniglot zips ($MTL_OMNIGLOT_DIR if unset).")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS default if unset).")
_STEPS = flags.DEFINE_integer("num_steps", 2000, "Train steps of every run.")
_METHODS = flags.DEFINE_list(
    "methods", ["equal", "uncertainty", "dwa", "rlw", "gradnorm", "famo"], "Weightings."
)
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table to this file.")
_ROTATION = flags.DEFINE_bool(
    "rotation", False, "Add a column: equal weighting plus the rotation-prediction SSL task."
)
_FILTERS = flags.DEFINE_integer("filters", None, "conv4 filters (the config's when unset).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch (the config's when unset).")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (_ROOT, _DATA_DIR, _TFDS_DIR, _STEPS, _METHODS, _OUT, _ROTATION, _FILTERS, _BATCH):
    flags.FLAGS[_holder.name].allow_override = True


def run(name: str, alphabets: str = "", weighting: str = "equal", rotation: bool = False) -> dict:
    """Trains (or reuses) one run; returns its test results and wall time."""
    workdir = os.path.join(_ROOT.value, name)
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            return json.load(f)
    config = (omniglot_rotation if rotation else omniglot_mtl).get_config(alphabets)
    config.num_steps = _STEPS.value
    config.data.data_dir = _DATA_DIR.value
    config.data.tfds_dir = _TFDS_DIR.value
    config.weighting.name = weighting
    if _FILTERS.value:
        config.model.conv4.filters = _FILTERS.value
    if _BATCH.value:
        config.batch_size = _BATCH.value
    start = time.time()
    if supervised.train(config, workdir).stopped:  # SIGTERM: the same command resumes it
        raise SystemExit(0)
    with open(results_path) as f:
        results = json.load(f)
    results["wall_seconds"] = time.time() - start
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    return results


def table(single: dict, multi: dict[str, dict]) -> str:
    """Markdown: one row per alphabet, one column per setting, then mean accuracy and Delta-m."""
    methods = list(multi)
    header = "| alphabet | single-task | " + " | ".join(methods) + " |"
    lines = [header, "|" + " --- |" * (2 + len(methods))]
    for task in sorted(single):
        cells = [f"{single[task]['test'][task]['accuracy']:.3f}"]
        cells += [f"{multi[m]['test'][task]['accuracy']:.3f}" for m in methods]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    stl = {task: {"accuracy": single[task]["test"][task]["accuracy"]} for task in single}
    mean = lambda res: sum(res[t]["accuracy"] for t in stl) / len(stl)  # noqa: E731
    lines.append(
        "| mean accuracy | "
        + " | ".join([f"{mean(stl):.3f}"] + [f"{mean(multi[m]['test']):.3f}" for m in methods])
        + " |"
    )
    lines.append(
        "| Delta-m (%) | 0.00 | "
        + " | ".join(f"{delta_m(multi[m]['test'], stl):+.2f}" for m in methods)
        + " |"
    )
    stl_time = sum(r["wall_seconds"] for r in single.values() if "wall_seconds" in r)
    lines.append(
        f"| train wall time (s) | {stl_time:.0f} (all {len(single)}) | "
        + " | ".join(f"{multi[m].get('wall_seconds', float('nan')):.0f}" for m in methods)
        + " |"
    )
    return "\n".join(lines)


def main(argv):
    del argv
    single = {a: run(f"single_{a}", alphabets=a) for a in sorted(omniglot_mtl.ALPHABETS)}
    multi = {m: run(f"multi_{m}", weighting=m) for m in _METHODS.value}
    if _ROTATION.value:
        multi["equal + rotation SSL"] = run("multi_equal_rotation", rotation=True)
    text = table(single, multi)
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    entry.run(main)
