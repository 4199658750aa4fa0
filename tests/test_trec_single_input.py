"""scripts/trec_single_input.py: TREC's two label sets joined into one table per split."""

import pytest

from mtl.data import tables
from mtl.errors import DataError
from scripts.trec_single_input import joined_rows, write_table

COARSE = ("HUM", "LOC")
FINE = ("HUM:ind", "LOC:city", "LOC:other")


def test_rows_carry_both_labels_and_read_back_as_two_tasks(tmp_path):
    questions = ["Who wrote Hamlet ?", "Where is Lyon ?", "Which river , then ?"]
    rows = joined_rows((questions, [0, 1, 1]), (questions, [0, 1, 2]), COARSE, FINE)
    assert rows == [
        ("Who wrote Hamlet ?", "HUM", "HUM:ind"),
        ("Where is Lyon ?", "LOC", "LOC:city"),
        ("Which river , then ?", "LOC", "LOC:other"),
    ]
    path = tmp_path / "train.csv"
    write_table(str(path), rows)
    table = tables.read_table(str(path), field="test")
    assert list(table) == ["text", "coarse", "fine"]
    assert tables.column(table, "fine", str(path), "test") == ["HUM:ind", "LOC:city", "LOC:other"]
    assert tables.column(table, "text", str(path), "test")[2] == "Which river , then ?"


def test_questions_out_of_step_are_one_error():
    with pytest.raises(DataError, match="same questions in the same order"):
        joined_rows((["a ?", "b ?"], [0, 1]), (["b ?", "a ?"], [1, 0]), COARSE, FINE)
