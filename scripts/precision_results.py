"""float32 against bfloat16 (`config.precision`) on three runs of the repository, side by side.

    .venv/bin/python -m scripts.precision_results --root=/work/runs/precision \
        --omniglot_dir=../shared/data/omniglot --senteval_dir=../shared/data/senteval \
        --readme=docs/models.md

- `maml`: sinusoid MAML (`configs/sinusoid_maml.py`, no joint baseline): test MSE after 10
  inner steps on 600 tasks, K = 5 and 10, with its 95% interval over tasks.
- `mtl`: Omniglot alphabets as eight tasks (`configs/omniglot_mtl.py`): mean test accuracy.
- `finetune`: all-MiniLM-L6-v2 fine-tuned on MR (`configs/senteval_finetune.py`): test accuracy.

Each pair is the same config but for `precision`. For the accuracies the interval is the 95%
binomial interval of the test set (1.96 sqrt(p (1 - p) / n)); a difference inside it is within
the noise of the measurement. Finished runs are reused (delete a run's folder to train it
again); the table is printed and, with --readme, written between the markers of that page.
"""

from __future__ import annotations

import math
import os

from absl import flags, logging

from mtl import entry
from scripts.finished_runs import timed_summary
from scripts.readme import write_between

BEGIN, END = "<!-- precision-results:begin -->", "<!-- precision-results:end -->"
_ROOT = flags.DEFINE_string("root", "/tmp/precision", "Folder for the runs.")
_OMNIGLOT = flags.DEFINE_string("omniglot_dir", "../shared/data/omniglot", "Omniglot zips.")
_SENTEVAL = flags.DEFINE_string("senteval_dir", "../shared/data/senteval", "SentEval folders.")
_RUNS = flags.DEFINE_list("runs", ["maml", "mtl", "finetune"], "Pairs to run.")
_MAML_STEPS = flags.DEFINE_integer("maml_steps", 15000, "Meta-steps of the sinusoid runs.")
_MTL_STEPS = flags.DEFINE_integer("mtl_steps", 1000, "Steps of the multi-task runs.")
_FT_STEPS = flags.DEFINE_integer("finetune_steps", 300, "Steps of the fine-tuning runs.")
_README = flags.DEFINE_string("readme", "", "Page to write the table into (between markers).")

PRECISIONS = ("float32", "bfloat16")


def maml_config():
    from configs import sinusoid_maml

    config = sinusoid_maml.get_config()
    config.num_steps = _MAML_STEPS.value
    config.baseline.joint = False
    return config


def mtl_config():
    from configs import omniglot_mtl

    config = omniglot_mtl.get_config()
    config.num_steps = _MTL_STEPS.value
    config.data.data_dir = _OMNIGLOT.value
    config.data.tfds_dir = os.path.join(_ROOT.value, "tfds")
    return config


def finetune_config():
    from configs import senteval_finetune
    from mtl.convert import converted_package

    config = senteval_finetune.get_config("mr")
    config.init.checkpoint = converted_package(os.path.join(_ROOT.value, "minilm"))
    config.num_steps = _FT_STEPS.value
    config.data.update(data_dir=_SENTEVAL.value, tfds_dir=os.path.join(_ROOT.value, "tfds"))
    return config


CONFIGS = {"maml": maml_config, "mtl": mtl_config, "finetune": finetune_config}


def trained(name: str, precision: str) -> dict:
    """One run's summary (test metrics and wall time), trained unless already finished."""
    config = CONFIGS[name]()
    config.precision = precision
    return timed_summary(os.path.join(_ROOT.value, f"{name}_{precision}"), config)


def measures(name: str, summary: dict) -> dict[str, tuple[float, float, str]]:
    """Measure -> (value, 95% half-width, format) of one run."""
    metrics = summary["metrics"]
    if name == "maml":
        return {
            f"{setting} test MSE": (c["mean"][-1], c["ci95"][-1], "{:.3f}")
            for setting, c in metrics["test"].items()
        }
    accuracy = sum(m["accuracy"] for m in metrics.values()) / len(metrics)
    count = sum(m["count"] for m in metrics.values())
    half = 1.96 * math.sqrt(accuracy * (1 - accuracy) / count)
    label = "mean test accuracy" if len(metrics) > 1 else f"{next(iter(metrics))} test accuracy"
    return {label: (100 * accuracy, 100 * half, "{:.2f}%")}


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| run | measure | float32 | bfloat16 | difference | within noise | wall (s) f32 / bf16 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, sides in results.items():
        full, half = measures(name, sides["float32"]), measures(name, sides["bfloat16"])
        walls = f"{sides['float32']['wall_seconds']:.0f} / {sides['bfloat16']['wall_seconds']:.0f}"
        for measure, (a, ci_a, fmt) in full.items():
            b, ci_b, _ = half[measure]
            within = "yes" if abs(a - b) <= max(ci_a, ci_b) else "no"
            cells = [f"{fmt.format(a)} +- {fmt.format(ci_a)}", f"{fmt.format(b)} +- "
                     f"{fmt.format(ci_b)}", fmt.format(b - a)]  # fmt: skip
            lines.append(f"| {name} | {measure} | {' | '.join(cells)} | {within} | {walls} |")
    return "\n".join(lines)


def main(argv):
    del argv
    os.makedirs(_ROOT.value, exist_ok=True)
    results = {}
    for name in _RUNS.value:
        results[name] = {p: trained(name, p) for p in PRECISIONS}
        logging.info("%s:\n%s", name, table({name: results[name]}))
    text = table(results)
    print(text)
    if _README.value:
        write_between(_README.value, BEGIN, END, text)


if __name__ == "__main__":
    entry.run(main)
