"""The SentEval gradient-methods script: training on tiny random features, table assembly."""

import numpy as np
import pytest

from scripts import senteval_gradient_methods as sgm


def _task(rng: np.random.Generator, direction: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Two classes split by a hyperplane through the origin: linearly separable."""
    x = rng.normal(size=(2 * n, direction.size)).astype(np.float32)
    y = (x @ direction > 0).astype(np.int32)
    return {
        "classes": np.int32(2),
        "train_x": x[:n],
        "train_y": y[:n],
        "test_x": x[n:],
        "test_y": y[n:],
    }


@pytest.mark.parametrize("method", ["equal", "pcgrad"])
def test_trains_one_head_per_task(method):
    rng = np.random.default_rng(0)
    data = {t: _task(rng, rng.normal(size=8), 64) for t in ("a", "b")}
    accuracy = sgm.train_and_test(data, ["a", "b"], method, seed=0, steps=60, batch=16)
    assert set(accuracy) == {"a", "b"}
    assert all(a > 0.7 for a in accuracy.values()), accuracy


def test_table_means_and_delta_m_per_seed():
    single = [{"a": 0.8, "b": 0.5}, {"a": 0.6, "b": 0.5}]
    multi = {"equal": [{"a": 0.88, "b": 0.5}, {"a": 0.6, "b": 0.55}]}
    text = sgm.table(["a", "b"], single, multi, {"single-task": 10.0, "equal": 4.0})
    lines = text.splitlines()
    assert lines[2] == "| a | 70.0 | 74.0 |"
    assert lines[4] == "| mean | 60.0 | 63.3 |"
    # Seed 0: (+10% + 0) / 2 = +5; seed 1: (0 + 10%) / 2 = +5: mean 5, sd 0.
    assert lines[5] == "| Delta-m (%) | 0.00 | +5.00 ± 0.00 |"
    assert lines[6] == "| train wall time (s) | 10 | 4 |"
