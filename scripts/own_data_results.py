"""The built-in sources against the user's-own-data sources on the same data, side by side.

    .venv/bin/python -m scripts.own_data_results --root=/work/runs/own_data \
        --omniglot_dir=../shared/data/omniglot --senteval_dir=../shared/data/senteval \
        --readme=docs/data.md

Three pairs of runs, each the same config but for its `data` block:

- `mtl`: Omniglot alphabets as eight tasks (`configs/omniglot_mtl.py`) from the built-in source,
  and from `image_folder` over the extracted zips with a labels file (one column per alphabet,
  empty for the others' images; drawers 16-20 in the test split, as the built-in source).
- `meta`: ProtoNets (`configs/omniglot_protonets.py`) on Omniglot episodes from the built-in
  family, and from the `image_folder` family (`class_depth=2`, four rotations).
- `senteval`: MiniLM fine-tuned on MR (`configs/senteval_finetune.py`) from the built-in
  source, and from `text_table` over CSV files written from it (same rows, same order).

Finished runs are reused (delete a run's folder to train it again); the table is printed and,
with --readme, written between the markers of that page.
"""

from __future__ import annotations

import csv
import os
import zipfile

from absl import flags, logging

from mtl import entry
from scripts.finished_runs import timed_summary
from scripts.readme import write_between

BEGIN, END = "<!-- own-data-results:begin -->", "<!-- own-data-results:end -->"
_ROOT = flags.DEFINE_string("root", "/tmp/own_data", "Folder for the runs and extracted data.")
_OMNIGLOT = flags.DEFINE_string("omniglot_dir", "../shared/data/omniglot", "Omniglot zips.")
_SENTEVAL = flags.DEFINE_string("senteval_dir", "../shared/data/senteval", "SentEval folders.")
_RUNS = flags.DEFINE_list("runs", ["mtl", "meta", "senteval"], "Pairs to run.")
_MTL_STEPS = flags.DEFINE_integer("mtl_steps", 2000, "Steps of the multi-task runs.")
_META_STEPS = flags.DEFINE_integer("meta_steps", 300, "Meta-steps of the ProtoNets runs.")
_FT_STEPS = flags.DEFINE_integer("finetune_steps", 300, "Steps of the fine-tuning runs.")
_README = flags.DEFINE_string("readme", "", "Page to write the table into (between markers).")


def extract_omniglot(zips_dir: str, tree: str) -> str:
    """The background_small zips as one tree `tree/<alphabet>/<character>/<file>.png` (Greek
    and Latin are in both zips: the same paths, kept once)."""
    if os.path.isdir(tree):
        return tree
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        with zipfile.ZipFile(os.path.join(zips_dir, name)) as z:
            for member in z.namelist():
                parts = member.split("/")[1:]  # drop the zip's top folder
                if member.endswith(".png") and len(parts) == 3:
                    out = os.path.join(tree, *parts)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    with open(out, "wb") as f:
                        f.write(z.read(member))
    return tree


def omniglot_labels(tree: str, path: str, test_drawers=(16, 17, 18, 19, 20)) -> str:
    """A labels file: one column per alphabet (the character, empty for other alphabets'
    images) and a split column by drawer (the file name's `_YY` suffix)."""
    alphabets = sorted(os.listdir(tree))
    rows = []
    for alphabet in alphabets:
        for character in sorted(os.listdir(os.path.join(tree, alphabet))):
            for name in sorted(os.listdir(os.path.join(tree, alphabet, character))):
                drawer = int(name.rsplit("_", 1)[1].split(".")[0])
                cells = [character if a == alphabet else "" for a in alphabets]
                split = "test" if drawer in test_drawers else "train"
                rows.append([f"{alphabet}/{character}/{name}", split, *cells])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", *alphabets])
        writer.writerows(rows)
    return path


def senteval_tables(out_dir: str, task: str = "mr") -> dict[str, str]:
    """The built-in source's train and test rows of `task` as CSV files, in the same order."""
    from mtl.data.senteval import load_senteval
    from mtl.data.senteval_tfds import TASKS

    os.makedirs(out_dir, exist_ok=True)
    splits = load_senteval(task, _SENTEVAL.value, os.path.join(_ROOT.value, "tfds"))
    names = TASKS[task].labels
    paths = {}
    for split in ("train", "test"):
        paths[split] = os.path.join(out_dir, f"{task}_{split}.csv")
        with open(paths[split], "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", task])
            writer.writerows([s, names[y]] for s, y in zip(*splits[split], strict=True))
    return paths


def mtl_pair():
    from configs import omniglot_mtl

    builtin = omniglot_mtl.get_config()
    builtin.num_steps = _MTL_STEPS.value
    builtin.data.data_dir = _OMNIGLOT.value
    builtin.data.tfds_dir = os.path.join(_ROOT.value, "tfds")
    own = omniglot_mtl.get_config()
    own.num_steps = _MTL_STEPS.value
    tree = extract_omniglot(_OMNIGLOT.value, os.path.join(_ROOT.value, "omniglot_tree"))
    labels = omniglot_labels(tree, os.path.join(_ROOT.value, "omniglot_labels.csv"))
    own.data = dict(name="image_folder", root=tree, labels_file=labels, split_column="split",
                    image_size=28, channels=1, invert=True)  # fmt: skip
    return builtin, own


def meta_pair():
    from configs import omniglot_protonets

    configs = []
    for _ in range(2):
        config = omniglot_protonets.get_config()
        config.num_steps = _META_STEPS.value
        config.baseline.joint = False
        config.eval.val_every = 0
        configs.append(config)
    builtin, own = configs
    builtin.data.data_dir = _OMNIGLOT.value
    builtin.data.tfds_dir = os.path.join(_ROOT.value, "tfds")
    tree = extract_omniglot(_OMNIGLOT.value, os.path.join(_ROOT.value, "omniglot_tree"))
    own.data = dict(name="image_folder", root=tree, class_depth=2, image_size=28, channels=1,
                    invert=True, rotations=(0, 1, 2, 3))  # fmt: skip
    return builtin, own


def senteval_pair():
    from configs import senteval_finetune
    from mtl.convert import package_dir, write_checkpoint

    minilm = os.path.join(_ROOT.value, "minilm")
    if not os.path.isdir(minilm):
        write_checkpoint(package_dir(), minilm)
    configs = []
    for _ in range(2):
        config = senteval_finetune.get_config("mr")
        config.init.checkpoint = minilm
        config.num_steps = _FT_STEPS.value
        configs.append(config)
    builtin, own = configs
    builtin.data.update(data_dir=_SENTEVAL.value, tfds_dir=os.path.join(_ROOT.value, "tfds"))
    tables = senteval_tables(os.path.join(_ROOT.value, "senteval_tables"))
    own.data = dict(name="text_table", train=tables["train"], test=tables["test"],
                    text_column="sentence", classes={"mr": ["negative", "positive"]},
                    tokenizer_dir=minilm, max_length=64)  # fmt: skip
    return builtin, own


PAIRS = {"mtl": mtl_pair, "meta": meta_pair, "senteval": senteval_pair}


def trained(name: str, side: str, config) -> dict:
    """One run's summary (test metrics and wall time), trained unless already finished."""
    workdir = os.path.join(_ROOT.value, f"{name}_{side}")
    return timed_summary(workdir, config, data=dict(config.data))


def scores(name: str, summary: dict) -> dict[str, str]:
    """Column -> formatted score of one run."""
    metrics = summary["metrics"]
    if name == "meta":
        return {
            setting: f"{100 * c['mean'][-1]:.1f} +- {100 * c['ci95'][-1]:.1f}%"
            for setting, c in metrics["test"].items()
        }
    accuracies = {task: m["accuracy"] for task, m in metrics.items()}
    mean = sum(accuracies.values()) / len(accuracies)
    label = "mean test accuracy" if len(accuracies) > 1 else f"{next(iter(accuracies))} accuracy"
    return {label: f"{100 * mean:.2f}%"}


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = ["| pair | measure | built-in source | own-data source | all metrics equal "
             "| wall (s) built-in / own |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, sides in results.items():
        builtin, own = scores(name, sides["builtin"]), scores(name, sides["own"])
        walls = f"{sides['builtin']['wall_seconds']:.0f} / {sides['own']['wall_seconds']:.0f}"
        # Every metric of every task (or episode setting) to the last digit.
        equal = "yes" if sides["builtin"]["metrics"] == sides["own"]["metrics"] else "no"
        for measure in builtin:
            lines.append(
                f"| {name} | {measure} | {builtin[measure]} | {own[measure]} | {equal} | {walls} |"
            )
    return "\n".join(lines)


def main(argv):
    del argv
    os.makedirs(_ROOT.value, exist_ok=True)
    results = {}
    for name in _RUNS.value:
        builtin, own = PAIRS[name]()
        results[name] = {
            "builtin": trained(name, "builtin", builtin),
            "own": trained(name, "own", own),
        }
        logging.info("%s: %s", name, table({name: results[name]}))
    text = table(results)
    print(text)
    if _README.value:
        write_between(_README.value, BEGIN, END, text)


if __name__ == "__main__":
    entry.run(main)
