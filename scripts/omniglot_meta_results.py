"""Omniglot 5-way 1- and 5-shot meta-test accuracy of the meta-learners, as a README table.

Trains each run of `RUNS` (a config plus the overrides that set its budget) on the two
background_small zips, scores it on 600 meta-test episodes of 5-way 1-shot and 5-shot, and
writes a markdown table between the README's `omniglot-meta-results` markers. Each run lives
in `<root>/<name>`; finished runs (their results.json) are reused, so the script can be
stopped and started again; `--norun` only renders the table from finished runs.

    .venv/bin/python -m scripts.omniglot_meta_results --root=/tmp/omniglot_meta \
        --data_dir=../shared/data/omniglot --runs=protonets,maml_1shot
"""

from __future__ import annotations

import json
import os
import re
import time

from absl import flags, logging

from configs import omniglot_maml, omniglot_protonets
from mtl import entry
from mtl.runs import meta as meta_run

_ROOT = flags.DEFINE_string("root", "/tmp/omniglot_meta", "Where the runs live.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Omniglot zips ($MTL_OMNIGLOT_DIR if unset).")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS default if unset).")
_RUNS = flags.DEFINE_list("runs", ["protonets", "maml_1shot"], "Which runs of RUNS.")
_NORUN = flags.DEFINE_bool("norun", False, "Only render the table from finished runs.")
_README = flags.DEFINE_string("readme", "docs/results.md", "README whose marked block is replaced.")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (_ROOT, _DATA_DIR, _TFDS_DIR, _RUNS, _NORUN, _README):
    flags.FLAGS[_holder.name].allow_override = True

BEGIN, END = "<!-- omniglot-meta-results:begin -->", "<!-- omniglot-meta-results:end -->"

# name -> (config module, config argument, overrides as --config.<field>=<value>)
RUNS = {
    "protonets": (omniglot_protonets, "", {"num_steps": 500}),
    # Second-order MAML, 5-way 1-shot, as configs/omniglot_maml.py but with the meta-batch cut
    # from 32 to 8 and 5 inner steps at test instead of 10, to fit the CPU budget.
    "maml_1shot": (
        omniglot_maml,
        "",
        {
            "num_steps": 5000,
            "meta.meta_batch": 8,
            "eval.shots": (1, 5),
            "eval.inner_steps": 5,
            "eval.val_every": 0,
        },
    ),
}


def make_config(name: str):
    module, argument, overrides = RUNS[name]
    config = module.get_config(argument) if argument else module.get_config()
    for field, value in overrides.items():
        block, _, key = field.rpartition(".")
        (config[block] if block else config)[key] = value
    config.data.data_dir = _DATA_DIR.value or ""
    config.data.tfds_dir = _TFDS_DIR.value or ""
    return config


def command(name: str) -> str:
    """The launch.train command that trains the same run."""
    module, argument, overrides = RUNS[name]
    path = f"configs/{module.__name__.split('.')[-1]}.py" + (f":{argument}" if argument else "")
    flags_ = " ".join(
        f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in overrides.items()
    )
    return (
        f"python -m launch.train --config={path} --workdir=/tmp/{name} "
        f"--config.data.data_dir=../shared/data/omniglot {flags_}"
    )


def run(name: str) -> dict | None:
    """Trains (or reuses) one run; its results with the wall time, or None (--norun)."""
    workdir = os.path.join(_ROOT.value, name)
    summary = os.path.join(workdir, "summary.json")
    if os.path.exists(summary):
        with open(summary) as f:
            return json.load(f)
    if _NORUN.value:
        logging.warning("No finished run %s in %s; left out of the table.", name, workdir)
        return None
    # Wall time from the run's first start, resumed segments and any pause between included.
    os.makedirs(workdir, exist_ok=True)
    started = os.path.join(workdir, "started")
    if not os.path.exists(started):
        with open(started, "w") as f:
            f.write(str(time.time()))
    with open(started) as f:
        start = float(f.read())
    result = meta_run.train(make_config(name), workdir)
    if result.stopped:  # SIGTERM: the same command resumes it
        return None
    results = result.metrics["meta_test"]
    results["wall_seconds"] = time.time() - start
    with open(summary, "w") as f:
        json.dump(results, f, indent=2)
    return results


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per run, 5-way 1-shot and 5-shot accuracy (mean +- 95% CI)."""
    lines = [
        "| run | trained on | meta-steps x meta-batch | train wall (min) | test 5-way 1-shot "
        "| test 5-way 5-shot |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        config = make_config(name)
        m = config.meta
        cells = []
        for setting in ("5way_1shot", "5way_5shot"):
            c = r["test"].get(setting)
            if c is None:
                cells.append("-")
                continue
            steps = len(c["mean"]) - 1
            after = f" ({steps} steps)" if steps else ""
            cells.append(f"{100 * c['mean'][-1]:.1f} +- {100 * c['ci95'][-1]:.1f}%{after}")
        wall = r.get("wall_seconds", float("nan")) / 60
        lines.append(
            f"| {name} | {m.ways}-way {m.shots}-shot | {r['step']} x {m.meta_batch} "
            f"| {wall:.1f} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    lines.append("Commands (one per run; the script runs the same configs):")
    lines.append("")
    lines.append("```bash")
    lines += [command(name) for name in results]
    lines.append("```")
    return "\n".join(lines)


def write_readme(path: str, text: str) -> None:
    with open(path) as f:
        readme = f.read()
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"{path} has no {BEGIN} ... {END} block.")
    block = f"{BEGIN}\n{text}\n{END}"
    readme = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, readme, flags=re.S)
    with open(path, "w") as f:
        f.write(readme)


def main(argv):
    del argv
    results = {name: run(name) for name in _RUNS.value}
    results = {k: v for k, v in results.items() if v is not None}
    text = table(results)
    print(text)
    if _README.value:
        write_readme(_README.value, text)


if __name__ == "__main__":
    entry.run(main)
