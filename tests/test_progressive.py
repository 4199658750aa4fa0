"""The progressive-networks trainer: phases, frozen columns passed as values, resume, checks."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from configs import omniglot_progressive
from mtl import checkpoint, preemption
from mtl.errors import ConfigError
from mtl.runs import get_trainer
from mtl.runs import progressive_networks as trainer


def tiny_config(omniglot_dir, omniglot_tfds_dir, alphabets="Greek,Latin"):
    config = omniglot_progressive.get_config(alphabets)
    config.update_from_flattened_dict(
        {
            "num_steps": 3,
            "batch_size": 16,
            "eval_batch_size": 256,
            "log_every": 3,
            "progressive.hidden": (8, 8),
            "data.data_dir": omniglot_dir,
            "data.tfds_dir": omniglot_tfds_dir,
        }
    )
    return config


def final_params(workdir):
    state = checkpoint.final_state(workdir)
    return state["params"], state["extras"]


def test_run_keeps_column_1_bit_identical(
    tmp_path, omniglot_images, omniglot_dir, omniglot_tfds_dir
):
    assert get_trainer("progressive") is trainer.train
    result = trainer.train(tiny_config(omniglot_dir, omniglot_tfds_dir), str(tmp_path))
    final = result["test"]
    assert set(final) == {"Greek", "Latin"}
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in final.values())
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["phases"] == ["Greek", "Latin"]
    assert report["column1_bit_identical"] is True
    # Phase 1 scored Greek with the column phase 0 left, which phase 1 did not train.
    after = report["after_phase"]
    assert set(after[0]) == {"Greek"} and set(after[1]) == {"Greek", "Latin"}
    assert after[1]["Greek"] == after[0]["Greek"] == final["Greek"]
    column1, _ = final_params(str(tmp_path / "phase0"))
    column2, extras = final_params(str(tmp_path / "phase1"))
    (frozen,) = extras["columns"]
    jax.tree.map(np.testing.assert_array_equal, column1, frozen)
    assert len(column2["layers"][1]["laterals"]) == 1  # column 2 reads column 1
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.any(a != b), column1, frozen))
    assert not any(moved)


def test_preempted_run_resumes_to_the_uninterrupted_one(
    tmp_path, monkeypatch, omniglot_images, omniglot_dir, omniglot_tfds_dir
):
    config = tiny_config(omniglot_dir, omniglot_tfds_dir)
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    expected = trainer.train(config, whole)
    real_run = trainer.run

    def preempted_in_phase1(experiment, workdir):
        if workdir.endswith("phase1"):
            preemption.request_stop()  # as SIGTERM would: stop after the current step, saved
        return real_run(experiment, workdir)

    monkeypatch.setattr(trainer, "run", preempted_in_phase1)
    try:
        assert trainer.train(config, parts).stopped
    finally:
        preemption.reset()
    monkeypatch.setattr(trainer, "run", real_run)
    assert int(checkpoint.final_state(f"{parts}/phase1")["step"]) == 1
    resumed = trainer.train(config, parts)  # the same command resumes phase 1
    assert resumed["progressive"] == expected["progressive"]
    for a, b in zip(final_params(f"{whole}/phase1"), final_params(f"{parts}/phase1"), strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize(
    "update, message",
    [
        ({"progressive.phases": ()}, "config.progressive.phases is empty"),
        ({"progressive.phases": ("Greek,Latin",)}, "config.progressive.phases takes one task"),
        ({"progressive.phases": ("Greek", "Korean")}, "config.progressive.phases names unknown"),
        ({"progressive.phases": ("Greek", "Greek")}, "config.progressive.phases lists Greek"),
        ({"progressive.hidden": (8, 0)}, "config.progressive.hidden"),
    ],
)
def test_bad_phase_config_names_the_field(tmp_path, update, message):
    config = tiny_config("/nonexistent", "/nonexistent")
    config.update_from_flattened_dict(update)
    with pytest.raises(ConfigError, match=message):
        trainer.train(config, str(tmp_path))
    assert not (tmp_path / "phase0").exists()
