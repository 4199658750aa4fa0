"""The single-input results table: Delta-m per seed, spread, and Welch's test against EW."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch  # the test extra's PyTorch: its Student t distribution is the reference

from scripts import single_input_results as sir


@pytest.mark.parametrize(
    "a, b", [([1.0, 2.0, 3.0], [2.5, 3.5, 4.0]), ([0.1, 0.3, 0.2, 0.25], [1.0, 1.4, 0.7])]
)
def test_welch_p_value_matches_the_student_t_distribution(a, b):
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    # Two-sided tail of Student's t from its CDF, integrated numerically.
    student = torch.distributions.StudentT(torch.tensor(df, dtype=torch.float64))
    grid = torch.linspace(abs(t), abs(t) + 400.0, 2_000_001, dtype=torch.float64)
    tail = torch.trapezoid(student.log_prob(grid).exp(), grid).item()
    np.testing.assert_allclose(sir.welch_p_value(a, b), 2 * tail, rtol=2e-3)


def test_table_reports_delta_m_spread_and_noise():
    single = {t: [{"accuracy": {t: 0.5}, "wall_seconds": 1.0}] * 3 for t in sir.TASKS}
    equal = [{"accuracy": dict.fromkeys(sir.TASKS, v), "wall_seconds": 2.0}
             for v in (0.50, 0.51, 0.49)]  # fmt: skip
    better = [{"accuracy": dict.fromkeys(sir.TASKS, v), "wall_seconds": 4.0}
              for v in (0.60, 0.61, 0.59)]  # fmt: skip
    text = sir.table(single, {sir.BASELINE: equal, "upgrad / hps": better})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()}
    assert "| 0.00 +- 2.00 |" in rows["equal / hps"]  # Delta-m of 0.50 +- 0.01 against 0.5
    assert "| 20.00 +- 2.00 | yes (p=0.00) | 4 |" in rows["upgrad / hps"]


def test_combinations_parse_or_say_how_to_write_them():
    assert sir.parse_combination("mtan:pcgrad") == ("mtan", "pcgrad")
    with pytest.raises(ValueError, match="architecture:method"):
        sir.parse_combination("mtan-pcgrad")


def test_trec_problem_trains_both_heads_and_a_single_task_model(
    tmp_path, tiny_ckpt, senteval_dir, senteval_tfds_dir
):
    from types import SimpleNamespace

    from mtl.data import senteval_tfds as st

    flags = SimpleNamespace(root=str(tmp_path), data_dir=senteval_dir, tfds_dir=senteval_tfds_dir,
                            max_length=16, checkpoint=tiny_ckpt, learning_rate=None)  # fmt: skip
    base = sir.trec_config(flags)
    assert base.tasks.fine.num_outputs == len(st.TREC_FINE) == 50  # declared, not counted
    common = {"num_steps": 2, "batch_size": 8, "eval_batch_size": 128, "log_every": 1}
    both = sir.run(flags.root, "pcgrad_hps", 0, lambda: copy.deepcopy(base),
                   {**common, "weighting.name": "pcgrad"})  # fmt: skip
    assert set(both["accuracy"]) == {"coarse", "fine"}
    one = sir.only_task(copy.deepcopy(base), "fine")
    assert tuple(one.data.label_columns) == ("fine",) and list(one.tasks) == ["fine"]
    assert list(one.data.classes) == ["fine"]
