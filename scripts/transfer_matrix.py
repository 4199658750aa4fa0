"""The transfer matrix of a results table: how each task changes when trained with another.

Pure functions of run results (no flags), so tests and several results scripts can use them.
A cell is the row task's test accuracy when trained together with the column task (or with
all tasks) minus its accuracy trained alone, in points; ▲ / ▼ mark a change beyond two
standard errors of a difference of two accuracies, i.e. a gain or a loss (negative transfer)
that the test set can tell apart from noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Run = Mapping  # {"test": {task: {"accuracy": float, "count": int, ...}}, ...}


def significant(delta: float, accuracy: float, count: float) -> bool:
    """|delta| beyond two standard errors of a difference of two accuracies on `count` examples."""
    return abs(delta) > 2 * math.sqrt(2 * accuracy * (1 - accuracy) / max(count, 1))


def transfer_matrix(
    tasks: Sequence[str],
    alone: Mapping[str, Run],
    together_with_all: Run | None,
    pairs: Mapping[tuple[str, str], Run],
) -> str:
    """Markdown: one row per task (its accuracy alone, then its change with each partner).

    `alone[t]` is t's single-task run; `pairs[(a, b)]` (a < b) the run of a and b together;
    `together_with_all`, when given, the run of every task together (its own column). The
    partner columns are the tasks that appear in some pair, in `tasks` order; a pair not
    run shows "–", the diagonal "·".
    """
    missing = [t for t in tasks if t not in alone]
    if missing:
        raise ValueError(
            f"No single-task run for {', '.join(missing)}: each cell compares a task with itself "
            "trained alone, so run those tasks alone first (senteval_results: --parts=full)."
        )
    partners = sorted({t for pair in pairs for t in pair}, key=list(tasks).index)
    columns = [f"with {j}" for j in partners] + (["with all tasks"] if together_with_all else [])
    lines = ["| task | alone | " + " | ".join(columns) + " |"]
    lines.append("|" + " --- |" * (len(columns) + 2))
    for i in tasks:
        base = alone[i]["test"][i]
        cells = [f"{100 * base['accuracy']:.1f}"]
        for j in partners + (["all"] if together_with_all else []):
            run = together_with_all if j == "all" else pairs.get(tuple(sorted((i, j))))
            if i == j or run is None:
                cells.append("·" if i == j else "–")
                continue
            delta = run["test"][i]["accuracy"] - base["accuracy"]
            beyond_noise = significant(delta, base["accuracy"], base["count"])
            mark = ("▲" if delta > 0 else "▼") if beyond_noise else ""
            cells.append(f"{100 * delta:+.1f}{mark}")
        lines.append(f"| **{i}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)
