"""Delta-m against a hand computation."""

import pytest

from mtl.compare import delta_m


def test_delta_m_signs_lower_is_better_metrics():
    stl = {"a": {"accuracy": 0.8, "count": 10}, "r": {"mse": 2.0}}
    mtl = {"a": {"accuracy": 0.88}, "r": {"mse": 2.5}}
    # a: +10%; r: mse up 25% is worse: -25%; mean -7.5%.
    assert delta_m(mtl, stl) == pytest.approx(-7.5)


def test_delta_m_needs_a_metric():
    with pytest.raises(ValueError):
        delta_m({}, {"a": {"count": 1}})
