"""Multi-task data sets from the user's tables of sentences (the `text_table` source).

    # train.csv:  text,topic,sentiment
    #             "the plot drags",film,negative
    #             "great battery",,positive        <- no topic label: masked for that task
    train, test, classes = load(train="train.csv", test="test.csv", text_column="text", ...)

Every label column is a task (label field) of its own; its classes are the declared names
(`classes={"topic": [...]}`) or the sorted values found in the training file, and the class
names go into results.json. A second text column (`text_pair_column`) makes sentence-pair
tasks: the tokenizer joins the two with its separator. Text is tokenised once, to fixed-width
int arrays, with the run's tokenizer (`tokenizer_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtl.data import arrays, tables, text
from mtl.errors import ConfigError, DataError


def texts(table: tables.Table, name: str, path: str, field: str) -> list[str]:
    """A text column, every cell present (an empty sentence is a `DataError` naming its row)."""
    values = tables.column(table, name, path, field)
    for i, value in enumerate(values):
        if value is None:
            raise DataError(
                f"{path}, row {i + 2}, column {name!r}: the text is empty. Fill it in or drop "
                f"the row."
            )
    return values


def label_names(table: tables.Table, text_columns: Sequence[str], given: Sequence[str]) -> list:
    """The label columns: `given`, else every column that is not text."""
    names = list(given) or [c for c in table if c not in text_columns]
    if not names:
        raise ConfigError(
            f"The table has only text columns ({', '.join(table)}); add a label column or set "
            f"data.label_columns."
        )
    return names


def encode_table(
    table: tables.Table,
    path: str,
    *,
    tokenizer: Any,
    max_length: int,
    text_column: str,
    text_pair_column: str,
    label_columns: Sequence[str],
    classes: Mapping[str, Sequence[str]],
) -> arrays.ArrayDataset:
    """Tokens and one masked label column per task."""
    sentences = texts(table, text_column, path, "data.text_column")
    pairs = (
        texts(table, text_pair_column, path, "data.text_pair_column") if text_pair_column else None
    )
    labels, masks = {}, {}
    for name in label_columns:
        values = tables.column(table, name, path, "data.label_columns")
        column = tables.encode_labels(
            values, classes[name], path=path, name=name, field=f"data.classes.{name}"
        )
        labels[name], masks[name] = column.labels, column.mask
    inputs = text.tokenize(tokenizer, sentences, max_length, pairs)
    return {"inputs": inputs, "labels": labels, "masks": masks}


def load(
    *,
    train: str,
    test: str,
    text_column: str,
    text_pair_column: str,
    label_columns: Sequence[str],
    classes: Mapping[str, Sequence[str]] | None,
    tokenizer_dir: str | None,
    max_length: int,
    test_fraction: float,
    split_seed: int,
) -> tuple[arrays.ArrayDataset, arrays.ArrayDataset, dict[str, tuple[str, ...]]]:
    """`(train, test, class names per task)`; without a test file, a seeded `test_fraction` of
    the training rows is held out."""
    if not train:
        raise ConfigError("No table: set --config.data.train to a .csv, .tsv or .jsonl file.")
    if not test and not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"Without data.test, data.test_fraction (in (0, 1)) holds out test rows; got "
            f"{test_fraction}."
        )
    tables_ = {"train": tables.read_table(train, field="data.train")}
    if test:
        tables_["test"] = tables.read_table(test, field="data.test")
    text_columns = [c for c in (text_column, text_pair_column) if c]
    names = label_names(tables_["train"], text_columns, label_columns)
    classes = dict(classes or {})
    declared = {n: tuple(map(str, classes.get(n) or ())) for n in names}
    for n in names:  # classes found in the training file unless declared
        if not declared[n]:
            found = tables.column(tables_["train"], n, train, "data.label_columns")
            declared[n] = tables.found_classes(found)
    tokenizer = text.load_tokenizer(text.check_tokenizer_dir(tokenizer_dir))
    encoded = {
        split: encode_table(
            table,
            train if split == "train" else test,
            tokenizer=tokenizer,
            max_length=max_length,
            text_column=text_column,
            text_pair_column=text_pair_column,
            label_columns=names,
            classes=declared,
        )
        for split, table in tables_.items()
    }
    if test:
        return encoded["train"], encoded["test"], declared
    whole = encoded["train"]
    is_test = np.random.default_rng(split_seed).random(arrays.num_examples(whole)) < test_fraction
    return (
        arrays.take(whole, np.flatnonzero(~is_test)),
        arrays.take(whole, np.flatnonzero(is_test)),
        declared,
    )


def class_examples(
    path: str,
    *,
    text_column: str,
    text_pair_column: str,
    label_columns: Sequence[str],
    tokenizer_dir: str | None,
    max_length: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """`(tokens, class per example, class names)` of a table for episodes: a class is one
    value of one label column, named `<column>/<value>`; a row labelled in two columns is an
    example of two classes."""
    table = tables.read_table(path, field="data.table")
    text_columns = [c for c in (text_column, text_pair_column) if c]
    columns = label_names(table, text_columns, label_columns)
    sentences = texts(table, text_column, path, "data.text_column")
    pairs = (
        texts(table, text_pair_column, path, "data.text_pair_column")
        if (text_pair_column)
        else None
    )
    tokenizer = text.load_tokenizer(text.check_tokenizer_dir(tokenizer_dir))
    tokens = text.tokenize(tokenizer, sentences, int(max_length), pairs)
    examples, labels, names = [], [], []
    for column in columns:
        values = tables.column(table, column, path, "data.label_columns")
        lookup = {v: len(names) + i for i, v in enumerate(tables.found_classes(values))}
        names += [f"{column}/{v}" for v in tables.found_classes(values)]
        kept = [i for i, v in enumerate(values) if v is not None]
        examples += kept
        labels += [lookup[values[i]] for i in kept]
    index = np.array(examples, np.int64)
    return {k: v[index] for k, v in tokens.items()}, np.array(labels, np.int64), names


def named_tasks(
    *,
    senteval: Sequence[str],
    senteval_dir: str | None,
    tfds_dir: str | None,
    senteval_split: str,
    tables: Mapping[str, str],
    text_column: str,
    text_pair_column: str,
    label_column: str,
    tokenizer_dir: str | None,
    max_length: int,
) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray, list[str]]]:
    """`{task: (tokens, class per example, class names)}` of SentEval tasks and the user's
    tables (one label column each), for episodes drawn one task at a time."""
    if not senteval and not tables:
        raise ConfigError(
            "No tasks: list SentEval tasks in data.senteval or tables in data.tables "
            "({name: file})."
        )
    clash = sorted(set(senteval) & set(tables))
    if clash:
        raise ConfigError(f"Task {clash[0]!r} is both a SentEval task and a table: rename it.")
    out = {}
    if senteval:
        out |= _senteval_tasks(senteval, senteval_dir, tfds_dir, senteval_split, tokenizer_dir,
                               max_length)  # fmt: skip
    for name, path in tables.items():
        tokens, labels, names = class_examples(
            path,
            text_column=text_column,
            text_pair_column=text_pair_column,
            label_columns=(label_column,),
            tokenizer_dir=tokenizer_dir,
            max_length=max_length,
        )
        out[name] = (tokens, labels, [n.split("/", 1)[1] for n in names])
    return out


def _senteval_tasks(tasks, data_dir, tfds_dir, split, tokenizer_dir, max_length):
    from mtl.data import senteval  # imports TensorFlow: only when SentEval is read
    from mtl.data.senteval_tfds import TASKS

    if split not in senteval.SPLITS:
        raise ConfigError(
            f"data.senteval_split must be one of {', '.join(senteval.SPLITS)}, got {split!r}."
        )
    tasks = senteval.check_tasks(tasks)
    root = os.fspath(senteval.check_data_dir(senteval.resolve_data_dir(data_dir), tasks))
    tokenizer = text.load_tokenizer(text.check_tokenizer_dir(tokenizer_dir))
    out = {}
    for task in tasks:
        sentences, labels = senteval.load_senteval(task, root, tfds_dir)[split]
        tokens = text.tokenize(tokenizer, sentences, int(max_length))
        out[task] = (tokens, labels.astype(np.int64), list(TASKS[task].labels))
    return out
