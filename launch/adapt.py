"""Adapts a learner to a labelled support set and predicts a query set, from the command line.

    python -m launch.adapt --learner=/tmp/fewshot_mr --support=support.csv --query=query.csv \\
        --out=predictions.csv

`--learner` is the workdir of a meta-learning run (`launch.train`: meta-trained, or a
baseline run with `num_steps=0`). `--support` and `--query` are CSV / TSV / JSONL tables: the
inputs in `--input_column` (sentences for a text learner, image file paths for an image
one) and, in the support set, labels in `--label_column` (any strings). The output is the
query table with a `prediction` column (CSV to `--out`, else to stdout); when the query
table has labels too, the accuracy is printed. A bad file, column or label is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
import csv
import sys

import numpy as np
from absl import app, flags

from mtl import entry
from mtl.errors import ConfigError, DataError

_LEARNER = flags.DEFINE_string("learner", None, "Workdir of a meta-learning run.")
_SUPPORT = flags.DEFINE_string("support", None, "Labelled support table (.csv/.tsv/.jsonl).")
_QUERY = flags.DEFINE_string("query", None, "Query table (labels optional).")
_INPUT = flags.DEFINE_string("input_column", "text", "Column of the inputs (text or paths).")
_LABEL = flags.DEFINE_string("label_column", "label", "Column of the labels.")
_STEPS = flags.DEFINE_integer("steps", None, "Adaptation steps (default: the run's eval).")
_OUT = flags.DEFINE_string("out", None, "Predictions CSV (default: stdout).")
flags.mark_flags_as_required(["learner", "support", "query"])


def read_inputs(path: str, column: str, is_text: bool) -> list:
    """A table's input column: sentences, or images decoded from the listed files."""
    from mtl.data import tables, text_tasks

    table = tables.read_table(path, field=path)
    if is_text:
        return text_tasks.texts(table, column, path, "--input_column")
    from PIL import Image

    paths = tables.column(table, column, path, "--input_column")
    images = []
    for row, file in enumerate(paths):
        try:
            with Image.open(file) as image:
                images.append(np.asarray(image))
        except (OSError, TypeError) as err:
            raise DataError(f"{path}, row {row + 2}: cannot read image {file!r} ({err}).") from None
    return images


def read_labels(path: str, column: str, required: bool) -> list[str] | None:
    from mtl.data import tables

    table = tables.read_table(path, field=path)
    if column not in table and not required:
        return None
    labels = tables.column(table, column, path, "--label_column")
    missing = [i for i, v in enumerate(labels) if v is None]
    if missing:
        raise DataError(f"{path}, row {missing[0] + 2}: no label in column {column!r}.")
    return labels


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from mtl.data import tables
    from mtl.meta import families
    from mtl.runs.meta import load_learner

    try:
        learner = load_learner(_LEARNER.value)
        is_text = isinstance(families.describe(learner.config.data)[1], dict)  # token arrays
        support = read_inputs(_SUPPORT.value, _INPUT.value, is_text)
        labels = read_labels(_SUPPORT.value, _LABEL.value, required=True)
        query = read_inputs(_QUERY.value, _INPUT.value, is_text)
        truth = read_labels(_QUERY.value, _LABEL.value, required=False)
        adapted = learner.adapt(support, labels, steps=_STEPS.value)
        predictions = adapted.predict(query)
        accuracy = None if truth is None else adapted.evaluate(query, truth)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    table = tables.read_table(_QUERY.value, field="--query")
    columns = [*table, "prediction"]
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(_OUT.value, "w", newline="")) if _OUT.value else sys.stdout
        writer = csv.writer(out)
        writer.writerow(columns)
        for i, prediction in enumerate(predictions):
            writer.writerow([*(table[c][i] for c in table), prediction])
    if accuracy is not None:
        print(f"accuracy {accuracy:.4f} on {len(query)} queries", file=sys.stderr)


if __name__ == "__main__":
    entry.run(main)
