"""Tables of examples from CSV, TSV or JSONL files, and their label columns as class indices.

    table = read_table("train.csv")             # {"sentence": [...], "topic": ["a", "", ...]}
    column = encode_labels(table, "topic", "train.csv", classes=None)
    column.labels, column.mask, column.classes   # int32 [N] (-1 where missing), bool [N], names

The format follows the extension (`.csv`, `.tsv`, `.jsonl`/`.json`). Every value is kept as a
string; an empty cell, a JSON null or a key absent from a JSON line is a missing label (masked,
never a zero). Problems name the file, the row (1-based, as an editor shows lines) and the
column.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from mtl.errors import ConfigError, DataError

Table = dict[str, list[str | None]]
FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}


def read_table(path: str, *, field: str = "data") -> Table:
    """Column name -> the column's values (None where missing), in file order."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ConfigError(
            f"{path} (config {field}): unknown table format {ext!r}; use a .csv, .tsv or "
            f".jsonl file."
        )
    if not os.path.isfile(path):
        raise DataError(f"The table {path} does not exist (config {field}).")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: not UTF-8 text ({err.reason} at byte {err.start}). Save the "
            f"file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {os.path.basename(path)}`)."
        ) from None
    rows = _json_rows(text, path) if FORMATS[ext] is None else _csv_rows(text, path, FORMATS[ext])
    if not rows:
        raise DataError(f"The table {path} holds no rows.")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return {c: [_cell(row.get(c)) for row in rows] for c in columns}


def _cell(value) -> str | None:
    if value is None:
        return None
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value)
        if isinstance(value, (list, dict))
        else str(value)
    )
    return text if text.strip() else None


def _csv_rows(text: str, path: str, delimiter: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    for row in reader:
        if None in row:  # more cells than the header has columns
            raise DataError(
                f"{path}, line {reader.line_num}: {len(row) - 1 + len(row[None])} cells but the "
                f"header names {len(reader.fieldnames)} columns. Quote cells that contain "
                f"{delimiter!r}, or fix the row."
            )
        rows.append(row)
    return rows


def _json_rows(text: str, path: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {number}: not valid JSON ({err.msg}). Each line of a .jsonl "
                f"file is one JSON object."
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: a JSON object is needed, got {row!r:.60}.")
        rows.append(row)
    return rows


def column(table: Table, name: str, path: str, field: str) -> list[str | None]:
    """The column `name`, or a `ConfigError` naming the closest column and the fix."""
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, list(table), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"{path} has no column {name!r} (config {field}).{hint} Its columns: {', '.join(table)}."
    )


@dataclasses.dataclass(frozen=True)
class LabelColumn:
    labels: np.ndarray  # int32 [N], -1 where missing
    mask: np.ndarray  # bool [N]
    classes: tuple[str, ...]  # class index -> name


def encode_labels(
    values: Sequence[str | None],
    classes: Sequence[str],
    *,
    path: str,
    name: str,
    field: str,
    first_row: int = 2,
) -> LabelColumn:
    """Class names -> indices into `classes`; missing values are masked. A value not in
    `classes` is a `DataError` naming the file, the row and the column."""
    classes = tuple(str(c) for c in classes)
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.full(len(values), -1, np.int32)
    for i, value in enumerate(values):
        if value is None:
            continue
        if value not in lookup:
            raise DataError(
                f"{path}, row {i + first_row}, column {name!r}: label {value!r} is not one of "
                f"the declared classes ({', '.join(classes[:20])}"
                f"{', ...' if len(classes) > 20 else ''}). Fix the row or add the class to "
                f"config {field}."
            )
        labels[i] = lookup[value]
    return LabelColumn(labels, labels >= 0, classes)


def found_classes(*columns: Sequence[str | None]) -> tuple[str, ...]:
    """The distinct values of `columns` in a stable order: numerically when all are integers
    (so "10" comes after "9"), else alphabetically."""
    values = {v for col in columns for v in col if v is not None}
    if values and all(v.lstrip("-").isdigit() for v in values):
        return tuple(sorted(values, key=int))
    return tuple(sorted(values))
