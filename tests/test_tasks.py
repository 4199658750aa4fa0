"""Task specs, losses with missing labels, metrics, and label checks."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl.errors import ConfigError, DataError
from mtl.tasks import check_labels, tasks_from_config


def test_missing_labels_are_masked_not_zero():
    (task,) = tasks_from_config({"t": dict(num_outputs=3)})
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    labels = jnp.array([0, -1, 2])
    mask = jnp.array([True, False, True])
    expected = optax.softmax_cross_entropy_with_integer_labels(
        logits[jnp.array([0, 2])], labels[jnp.array([0, 2])]
    ).mean()
    np.testing.assert_allclose(task.loss_fn(logits, labels, mask), expected, rtol=1e-6)
    # Filling the missing label with class 0 would change the loss: masking is not zero-filling.
    zero_filled = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 0, 2]))
    assert not np.isclose(float(task.loss_fn(logits, labels, mask)), float(zero_filled.mean()))


def test_no_labels_gives_zero_loss_and_count():
    (task,) = tasks_from_config({"t": dict(num_outputs=3)})
    logits, labels, mask = jnp.ones((2, 3)), jnp.array([-1, -1]), jnp.array([False, False])
    assert float(task.loss_fn(logits, labels, mask)) == 0.0
    assert float(task.metric_sums(logits, labels, mask)["count"]) == 0.0


def test_nan_targets_of_unlabelled_rows_leave_loss_gradient_and_metrics_finite():
    import jax

    (task,) = tasks_from_config({"r": dict(head="regression", num_outputs=1)})
    outputs = jnp.array([[0.5], [2.0], [-1.0]])
    labels = jnp.array([1.0, jnp.nan, 0.0])  # row 1 has no target
    mask = jnp.array([True, False, True])
    loss, grad = jax.value_and_grad(lambda o: task.loss_fn(o, labels, mask))(outputs)
    np.testing.assert_allclose(loss, (0.25 + 1.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(grad, [[-0.5], [0.0], [-1.0]], rtol=1e-6)
    sums = task.metric_sums(outputs, labels, mask)
    np.testing.assert_allclose([sums["mse"], sums["mae"]], [1.25, 1.5], rtol=1e-6)


def test_metric_sums_count_only_labelled_examples():
    (task,) = tasks_from_config({"t": dict(num_outputs=2)})
    logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    sums = task.metric_sums(logits, jnp.array([0, 0, 1]), jnp.array([True, True, False]))
    assert float(sums["accuracy"]) == 1.0 and float(sums["count"]) == 2.0


def test_regression_and_multilabel_defaults():
    tasks = tasks_from_config(
        {"r": dict(head="regression", num_outputs=2), "m": dict(head="multilabel", num_outputs=3)}
    )
    m, r = tasks  # sorted by name
    assert (r.loss, r.metrics) == ("mse", ("mse", "mae"))
    assert m.loss == "sigmoid_cross_entropy"
    sums = r.metric_sums(jnp.array([[1.0, 3.0]]), jnp.array([[0.0, 1.0]]), jnp.array([True]))
    np.testing.assert_allclose(sums["mse"], 2.5)
    np.testing.assert_allclose(sums["mae"], 1.5)


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            dict(head="classifcation", num_outputs=2),
            r"Unknown head 'classifcation'.*classification",
        ),
        (dict(num_outputs=2, loss="mse_loss"), r"Unknown loss 'mse_loss'.*'mse'"),
        (dict(num_outputs=2, metrics=("acc",)), r"Unknown metric 'acc'"),
        (dict(num_outputs=0), r"positive integer num_outputs"),
        (dict(num_outputs=2, lable="x"), r"unknown field\(s\) lable"),
    ],
)
def test_bad_task_config_is_named(spec, message):
    with pytest.raises(ConfigError, match=message):
        tasks_from_config({"t": spec})


def test_label_out_of_range_names_task_and_fix():
    (task,) = tasks_from_config({"Greek": dict(num_outputs=20)})
    labels = {"Greek": np.array([0, 23, -1])}
    masks = {"Greek": np.array([True, True, False])}
    with pytest.raises(DataError, match=r"Greek.*\[0, 23\].*num_outputs=24"):
        check_labels([task], labels, masks, "train")


def test_masked_out_labels_are_not_range_checked():
    (task,) = tasks_from_config({"t": dict(num_outputs=2)})
    check_labels([task], {"t": np.array([1, -1, 99])}, {"t": np.array([1, 0, 0], bool)}, "test")


def test_unknown_label_field_lists_fields():
    (task,) = tasks_from_config({"t": dict(num_outputs=2, label="Gerek")})
    with pytest.raises(ConfigError, match=r"label field 'Gerek'.*Greek"):
        check_labels([task], {"Greek": np.zeros(1)}, {"Greek": np.ones(1, bool)}, "train")
