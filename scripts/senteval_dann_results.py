"""Domain adaptation on SentEval: MiniLM fine-tuned on a source task's labels, scored on a
target task, with and without domain-adversarial training.

    python -m scripts.senteval_dann_results --root=/tmp/senteval_dann \
        --data_dir=../shared/data/senteval --readme=docs/results.md

For each `source,target` pair of `--pairs`, each seed and each gradient-reversal scale of
`--scales` (0 is the source-only baseline: the same model and batches, no adversarial gradient
into the trunk) one run of `configs/senteval_dann.py` from all-MiniLM-L6-v2 (converted from
the PyPI package). Runs already finished under --root are read, not rerun.

Prints a markdown table (the source head's test accuracy on the source and on the target, and
the domain classifier's test accuracy) and, with --readme, writes it between the README's
markers.
"""

from __future__ import annotations

import json
import os

from absl import flags, logging

from mtl import entry
from scripts import readme
from scripts.finished_runs import percent

_ROOT = flags.DEFINE_string("root", "/tmp/senteval_dann", "Where runs and results go.")
_DATA = flags.DEFINE_string("data_dir", None, "SentEval folder (else $MTL_SENTEVAL_DIR).")
_TFDS = flags.DEFINE_string("tfds_dir", None, "TFDS data dir (TFDS's default when unset).")
_PAIRS = flags.DEFINE_list("pairs", ["mr:sst2", "mpqa:mr"], "source:target task pairs.")
_SCALES = flags.DEFINE_list("scales", ["0", "0.1"], "Gradient-reversal scales (0: source only).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds.")
_STEPS = flags.DEFINE_integer("steps", 300, "Fine-tuning steps per run.")
_README = flags.DEFINE_string("readme", None, "README to write the table into (markers).")
_RUN = flags.DEFINE_bool("run", True, "Run what is missing; with --norun only render.")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (_ROOT, _DATA, _TFDS, _PAIRS, _SCALES, _SEEDS, _STEPS, _README, _RUN):
    flags.FLAGS[_holder.name].allow_override = True

BEGIN, END = "<!-- senteval-dann:begin -->", "<!-- senteval-dann:end -->"


def run(name: str, config) -> dict | None:
    """`dann.json` of run `name`, training it first when missing (and --run)."""
    from mtl.runs import domain_adversarial

    path = os.path.join(_ROOT.value, "runs", name)
    report = os.path.join(path, "dann.json")
    if not os.path.isfile(report):
        if not _RUN.value:
            return None
        logging.info("Run %s.", path)
        if domain_adversarial.train(config, path).stopped:  # SIGTERM: the same command resumes
            raise SystemExit(0)
    with open(report) as f:
        return json.load(f)


def render(results: dict[tuple[str, str], list[dict]]) -> str:
    lines = [
        "| source → target | training | seeds | source test accuracy | target test accuracy | "
        "domain classifier test accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (pair, scale), reports in results.items():
        if not reports:
            continue
        source, target = pair.split(":")
        method = "source only" if float(scale) == 0 else f"DANN (reversal scale {scale})"
        lines.append(
            f"| {source} → {target} | {method} | {', '.join(str(r['seed']) for r in reports)} | "
            f"{percent([r['source_test'] for r in reports])} | "
            f"{percent([r['target_test'] for r in reports])} | "
            f"{percent([r['domain_test'] for r in reports])} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    from configs import senteval_dann
    from mtl.convert import converted_package

    checkpoint = converted_package(os.path.join(_ROOT.value, "minilm"))
    results: dict[tuple[str, str], list[dict]] = {}
    for pair in _PAIRS.value:
        for seed in _SEEDS.value:
            for scale in _SCALES.value:
                config = senteval_dann.get_config(pair.replace(":", ","))
                config.data.update(data_dir=_DATA.value, tfds_dir=_TFDS.value)
                config.init.checkpoint = checkpoint
                config.seed = int(seed)
                config.num_steps = _STEPS.value
                config.checkpoint.every = _STEPS.value
                config.dann.scale = float(scale)
                report = run(f"{pair.replace(':', '_to_')}_scale{scale}_seed{seed}", config)
                results.setdefault((pair, scale), [])
                if report is not None:
                    results[(pair, scale)].append({**report, "seed": int(seed)})
    options = senteval_dann.get_config()
    markdown = (
        render(results)
        + "\n\n"
        + (
            "Test accuracy (%): the mean ± standard deviation over the seeds of a row when it "
            f"has several. Each run: {_STEPS.value} steps of full fine-tuning, batch "
            f"{options.batch_size} drawn from the source's labelled sentences and as many of the "
            "target's sentences (their labels unused), AdamW at "
            f"{options.optimizer.learning_rate:g} with warm-up and cosine decay; the domain "
            "classifier is a linear head on the pooled representation behind the "
            "gradient-reversal layer. A domain accuracy near 50% means the features no longer "
            "tell the domains apart."
        )
    )
    print(markdown)
    if _README.value:
        readme.write_between(_README.value, BEGIN, END, markdown)


if __name__ == "__main__":
    entry.run(main)
