"""The transfer matrix: layout, signs, missing pairs and the significance marks."""

from __future__ import annotations

import pytest

from scripts.transfer_matrix import significant, transfer_matrix


def run(**accuracy):
    return {"test": {t: {"accuracy": a, "count": 1000} for t, a in accuracy.items()}}


def cells(markdown: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines()[2:]]
    return {r[0].strip().strip("*"): [c.strip() for c in r[1:]] for r in rows}


def test_significance_is_two_standard_errors_of_a_difference():
    # accuracy 0.8 on 1000 examples: 2 * sqrt(2 * 0.16 / 1000) = 0.0358
    assert significant(0.036, 0.8, 1000) and significant(-0.036, 0.8, 1000)
    assert not significant(0.035, 0.8, 1000)
    assert significant(0.035, 0.8, 10_000)


def test_rows_columns_signs_marks_and_missing_pairs():
    tasks = ["a", "b", "c"]
    alone = {"a": run(a=0.80), "b": run(b=0.70), "c": run(c=0.90)}
    pairs = {("a", "b"): run(a=0.85, b=0.69), ("a", "c"): run(a=0.70, c=0.91)}  # (b, c) not run
    everything = run(a=0.81, b=0.60, c=0.95)
    markdown = transfer_matrix(tasks, alone, everything, pairs)
    header = markdown.splitlines()[0]
    assert header == "| task | alone | with a | with b | with c | with all tasks |"
    table = cells(markdown)
    assert list(table) == tasks
    assert table["a"] == ["80.0", "·", "+5.0▲", "-10.0▼", "+1.0"]
    assert table["b"] == ["70.0", "-1.0", "·", "–", "-10.0▼"]
    assert table["c"] == ["90.0", "+1.0", "–", "·", "+5.0▲"]


def test_partner_columns_are_the_tasks_that_were_paired():
    tasks = ["a", "b", "c", "d"]
    alone = {t: run(**{t: 0.5}) for t in tasks}
    markdown = transfer_matrix(tasks, alone, None, {("b", "d"): run(b=0.5, d=0.5)})
    assert markdown.splitlines()[0] == "| task | alone | with b | with d |"
    assert cells(markdown)["a"] == ["50.0", "–", "–"]
    assert cells(markdown)["d"] == ["50.0", "+0.0", "·"]


def test_a_task_without_a_single_task_run_is_named_in_the_error():
    with pytest.raises(ValueError, match="No single-task run for b"):
        transfer_matrix(["a", "b"], {"a": run(a=0.5)}, None, {})
