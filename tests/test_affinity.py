"""Lookahead task affinity: against a direct computation, groupings, report, and a real run."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import omniglot_affinity
from mtl import checkpoint
from mtl.models import build_model, default_config
from mtl.runs import task_affinity as affinity_trainer
from mtl.runs.supervised_step import make_steps
from mtl.transfer import affinity
from tests.helpers import sum_of_losses, toy_batch, toy_tasks
from tests.test_weighting import make_objective, make_problem, total_losses


def test_lookahead_affinity_matches_direct_computation():
    params, data = make_problem()
    lr = 0.3
    got = np.asarray(affinity.lookahead_affinity(make_objective(params, data), lr))
    before = np.asarray(total_losses(params, data))
    for i in range(3):
        g = jax.grad(lambda s, i=i: total_losses({**params, "shared": s}, data)[i])(
            params["shared"]
        )
        stepped = jax.tree.map(lambda p, gi: p - lr * gi, params["shared"], g)
        after = np.asarray(total_losses({**params, "shared": stepped}, data))
        np.testing.assert_allclose(got[i], 1 - after / before, rtol=1e-4, atol=1e-6)
    assert np.all(np.diag(got) > 0)  # a step on a task lowers its own loss


def test_suggest_groups_finds_the_blocks():
    # Tasks {0, 2} help each other, {1, 3, 4} help each other, the rest hurts.
    z = np.full((5, 5), -0.2)
    for block in ([0, 2], [1, 3, 4]):
        for i in block:
            for j in block:
                z[i, j] = 0.5
    groups, score = affinity.suggest_groups(z, 2)
    assert sorted(groups) == [[0, 2], [1, 3, 4]]
    assert score == pytest.approx(0.5)
    assert affinity.suggest_groups(z, 1)[1] < score
    # The exhaustive search visits every partition once: Stirling numbers S(5, k).
    assert [sum(1 for _ in affinity._partitions(list(range(5)), k)) for k in (1, 2, 3)] == [
        1,
        15,
        25,
    ]


def test_report_writes_matrix_groups_and_heatmap(tmp_path):
    z = np.array([[0.3, 0.1, -0.2], [0.1, 0.4, -0.1], [-0.3, -0.1, 0.2]])
    report = affinity.write_report(z, ["a", "b", "c"], str(tmp_path))
    np.testing.assert_allclose(np.load(tmp_path / "affinity.npy"), z)
    saved = json.loads((tmp_path / "affinity.json").read_text())
    assert saved["suggested_groups"]["2"]["groups"] == [["a", "b"], ["c"]]
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "affinity.png").read_bytes()[:4] == b"\x89PNG"


def test_accumulator_in_the_train_step_averages_the_measured_steps():
    config = default_config()
    config.trunk = "mlp"  # an MLP keeps the compile short; the step is the same for any trunk
    config.mlp.hidden = (8,)
    tasks = toy_tasks()
    model = build_model(config, tasks, (8, 8, 1), seed=0)
    steps = make_steps(model, tasks, optax.sgd(0.05), sum_of_losses(), seed=0)
    wrapped = affinity_trainer.with_affinity(steps, 3, every=2, lr=0.2)
    train_step = jax.jit(wrapped.train_step)
    state = wrapped.init()
    expected = np.zeros((3, 3))
    for step in range(4):
        batch = jax.tree.map(jnp.asarray, toy_batch(16, seed=step))
        if step % 2 == 0:
            objective = steps.objective(state.params, state.model_state, batch, True)
            expected += np.asarray(affinity.lookahead_affinity(objective, 0.2))
        state, _ = train_step(state, batch)
    assert int(state.extras["affinity"]["count"]) == 2
    np.testing.assert_allclose(state.extras["affinity"]["sum"], expected, rtol=1e-4, atol=1e-6)
    assert int(state.step) == 4


def test_affinity_run_writes_the_report(tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir):
    config = omniglot_affinity.get_config("Greek,Latin,Korean")
    config.update_from_flattened_dict(
        {
            "num_steps": 6,
            "batch_size": 24,
            "eval_batch_size": 256,
            "log_every": 3,
            "model.conv4.filters": 4,
            "affinity.every": 2,
            "data.data_dir": omniglot_dir,
            "data.tfds_dir": omniglot_tfds_dir,
        }
    )
    results = affinity_trainer.train(config, str(tmp_path))["test"]
    assert set(results) == {"Greek", "Korean", "Latin"}
    report = json.loads((tmp_path / "affinity" / "affinity.json").read_text())
    assert report["tasks"] == ["Greek", "Korean", "Latin"]
    z = np.asarray(report["affinity"])
    assert z.shape == (3, 3) and np.all(np.isfinite(z))
    assert np.all(np.diag(z) > 0)
    assert (tmp_path / "affinity" / "affinity.png").exists()


def test_distill_run_reads_a_teacher_workdir(
    tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir
):
    """A tiny conv4 teacher run, then an MLP student distilled from its workdir."""
    from configs import omniglot_distill, omniglot_mtl
    from mtl.errors import ConfigError
    from mtl.runs import distillation as distill_trainer
    from mtl.runs import supervised

    common = {
        "num_steps": 4,
        "batch_size": 16,
        "eval_batch_size": 256,
        "log_every": 2,
        "data.data_dir": omniglot_dir,
        "data.tfds_dir": omniglot_tfds_dir,
    }
    teacher = omniglot_mtl.get_config("Greek,Latin")
    teacher.update_from_flattened_dict({**common, "model.conv4.filters": 4})
    supervised.train(teacher, str(tmp_path / "teacher"))

    student = omniglot_distill.get_config("Greek,Latin")
    student.update_from_flattened_dict({**common, "model.mlp.hidden": (8,)})
    with pytest.raises(ConfigError, match="needs --config.teacher.workdir"):
        distill_trainer.train(student, str(tmp_path / "student"))
    student.teacher.workdir = str(tmp_path / "teacher")
    results = distill_trainer.train(student, str(tmp_path / "student"))["test"]
    assert set(results) == {"Greek", "Latin"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results.values())
    wrong = omniglot_distill.get_config("Greek,Korean")
    wrong.update_from_flattened_dict({**common, "teacher.workdir": str(tmp_path / "teacher")})
    with pytest.raises(ConfigError, match="has no task"):
        distill_trainer.train(wrong, str(tmp_path / "wrong"))


def test_sequential_run_with_ewc(tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir):
    """Two phases; the second starts from the first's trunk and keeps its head for the end."""
    from configs import omniglot_sequential
    from mtl.errors import ConfigError
    from mtl.runs import sequential

    config = omniglot_sequential.get_config("Greek,Latin")
    config.update_from_flattened_dict(
        {
            "num_steps": 3,
            "batch_size": 16,
            "eval_batch_size": 256,
            "log_every": 3,
            "model.mlp.hidden": (8,),
            "sequential.ewc_strength": 10.0,
            "data.data_dir": omniglot_dir,
            "data.tfds_dir": omniglot_tfds_dir,
        }
    )
    final = sequential.train(config, str(tmp_path))["test"]
    assert set(final) == {"Greek", "Latin"}
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["phases"] == [["Greek"], ["Latin"]]
    # The second phase started from the first phase's trunk, and the final Latin accuracy is
    # the second phase's own (same trunk, same head).
    first = checkpoint.final_state(str(tmp_path / "phase0"))["params"]
    assert final["Latin"]["accuracy"] == pytest.approx(
        report["after_phase"][1]["Latin"]["accuracy"]
    )
    assert "Greek" in first["heads"]
    second = checkpoint.final_state(str(tmp_path / "phase1"))["params"]
    # 3 Adam steps of lr 1e-3 move a parameter by at most ~3e-3: the trunk was carried over.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=5e-3), first["trunk"], second["trunk"]
    )
    config.sequential.phases = ("Greek",)
    with pytest.raises(ConfigError, match="at least two"):
        sequential.train(config, str(tmp_path / "bad"))
