"""Text tasks learned one after another on a BERT trunk (the fine-tuning loop per phase),
with and without EWC."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from configs import senteval_sequential
from mtl import checkpoint
from mtl.errors import ConfigError
from mtl.runs import get_trainer, sequential
from mtl.transfer import ewc
from tests.conftest import TINY_BERT
from tests.test_finetune import tiny_data_and_budget


def sequential_config(tiny_ckpt, senteval_dir, senteval_tfds_dir, strength):
    config = senteval_sequential.get_config("mr,trec_coarse")
    config.model.bert.update(TINY_BERT)
    config.init.checkpoint = tiny_ckpt
    config = tiny_data_and_budget(config, senteval_dir, senteval_tfds_dir)
    config.num_steps = 20
    config.optimizer.update(learning_rate=1e-3, schedule="constant")
    config.sequential.update(ewc_strength=strength, fisher_batch=4, fisher_examples=8)
    return config


def fisher_distance(fisher, a, b) -> float:
    """EWC's own measure of how far `b` moved from `a`: sum_i F_i (a_i - b_i)^2."""
    terms = jax.tree.map(lambda f, x, y: np.sum(f * (x - y) ** 2), fisher, a, b)
    return float(sum(jax.tree_util.tree_leaves(terms)))


def test_ewc_holds_the_bert_trunk_near_the_first_task(
    tmp_path, monkeypatch, tiny_ckpt, senteval_dir, senteval_tfds_dir
):
    assert get_trainer("sequential") is sequential.train
    fishers = []
    with_ewc = ewc.with_ewc

    def keep_fisher(weighting, anchor, fisher, strength):
        fishers.append(fisher)
        return with_ewc(weighting, anchor, fisher, strength)

    monkeypatch.setattr(ewc, "with_ewc", keep_fisher)
    trunks = {}
    for strength in (0.0, 1e6):
        workdir = tmp_path / f"ewc{strength:g}"
        config = sequential_config(tiny_ckpt, senteval_dir, senteval_tfds_dir, strength)
        final = sequential.train(config, str(workdir))["test"]

        assert set(final) == {"mr", "trec_coarse"}
        report = json.loads((workdir / "results.json").read_text())
        assert report["phases"] == [["mr"], ["trec_coarse"]]
        # The last task is evaluated with the trunk and head its own phase ended with.
        assert final["trec_coarse"]["accuracy"] == pytest.approx(
            report["after_phase"][1]["trec_coarse"]["accuracy"]
        )
        first = checkpoint.final_state(str(workdir / "phase0"))["params"]
        second = checkpoint.final_state(str(workdir / "phase1"))["params"]
        assert set(second["heads"]) == {"trec_coarse"}  # a new head, the old one kept aside
        trunks[strength] = (first["trunk"], second["trunk"])
    # The Fisher (of mr, on a BERT trunk fed token dicts) was estimated for the EWC run only,
    # and is not all zero.
    (fisher,) = fishers
    assert sum(float(np.sum(f)) for f in jax.tree_util.tree_leaves(fisher)) > 0
    # Both second phases started from the same first-phase trunk (phase 0 is seeded); by the
    # Fisher's measure the penalty kept the trunk far closer to it. (Plain L2 distance shows
    # little: Adam moves each parameter by about the learning rate per step, and most
    # embedding rows have no Fisher mass and move freely.)
    moved = {s: fisher_distance(fisher, *trunks[s]) for s in trunks}
    assert 0 < moved[1e6] < 0.1 * moved[0.0], moved

    # Run again on the finished workdir: nothing retrains, the Fisher is read back, not redone.
    workdir = tmp_path / "ewc1e+06"
    assert (workdir / "phase0" / "fisher_8x4").is_dir()
    again = sequential.train(config, str(workdir))["test"]
    assert again == final
    jax.tree.map(np.testing.assert_array_equal, fishers[1], fisher)


def test_bad_fisher_options_are_refused(tmp_path, tiny_ckpt, senteval_dir, senteval_tfds_dir):
    config = sequential_config(tiny_ckpt, senteval_dir, senteval_tfds_dir, 1.0)
    config.sequential.fisher_batch = 0
    with pytest.raises(ConfigError, match="fisher_batch must be >= 1"):
        sequential.train(config, str(tmp_path))
