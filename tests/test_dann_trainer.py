"""The `dann` trainer: a domain classifier behind gradient reversal, on a BERT trunk (text)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import senteval_dann
from mtl.errors import ConfigError
from mtl.models.functional import PureModule
from mtl.models.heads import HEADS, DenseHead
from mtl.runs import domain_adversarial as dann
from mtl.runs import get_trainer
from tests.conftest import TINY_BERT
from tests.test_finetune import tiny_data_and_budget


def test_the_domain_head_reverses_and_scales_the_gradient_into_its_input():
    plain = DenseHead(4, 2, rngs=nnx.Rngs(0))
    reversed_head = HEADS.get("domain_adversarial")(4, 2, rngs=nnx.Rngs(0))
    z = jax.random.normal(jax.random.key(1), (3, 4))
    for scale in (0.5, 0.0):
        reversed_head.reversal_scale = scale

        def input_grad(head):
            module, params, _ = PureModule.split(head)
            return jax.grad(lambda x: jnp.sum(module.apply(params, {}, x)[0] ** 2))(z)

        np.testing.assert_allclose(plain(z), reversed_head(z))  # forward: the same layer
        np.testing.assert_allclose(input_grad(reversed_head), -scale * input_grad(plain))


def test_with_domains_labels_domains_hides_target_labels_and_balances():
    masks = {"mr": np.array([1, 1, 0, 0, 0, 0], bool), "sst2": np.array([0, 0, 1, 1, 1, 1], bool)}
    data = {
        "inputs": np.arange(6),
        "labels": {"mr": np.array([0, 1, -1, -1, -1, -1]), "sst2": np.array([-1, -1, 1, 0, 1, 0])},
        "masks": masks,
    }
    train = dann.with_domains(data, "mr", "sst2", seed=0)
    assert sorted(train["labels"]) == ["domain", "mr"]  # no sst2 labels to train on
    assert len(train["inputs"]) == 4  # the target cut to the source's size
    assert train["labels"]["domain"].sum() == 2 and train["masks"]["mr"].sum() == 2
    assert np.all(train["masks"]["domain"])
    test = dann.with_domains(data, "mr", "sst2")
    np.testing.assert_array_equal(test["labels"]["domain"], [0, 0, 1, 1, 1, 1])
    scored = dann.target_as_source(data, "mr", "sst2")
    np.testing.assert_array_equal(scored["labels"]["mr"], [1, 0, 1, 0])


def test_dann_run_on_text_scores_the_source_head_on_the_target(
    tmp_path, tiny_ckpt, senteval_dir, senteval_tfds_dir
):
    config = senteval_dann.get_config("mr,sst2")
    config.model.bert.update(TINY_BERT)
    config.init.checkpoint = tiny_ckpt
    config = tiny_data_and_budget(config, senteval_dir, senteval_tfds_dir)
    assert get_trainer("dann") is dann.train

    results = dann.train(config, str(tmp_path))["test"]

    assert set(results) == {"mr", "domain", "sst2 (by the mr head)"}
    assert results["domain"]["count"] == 80  # 40 test sentences of each domain
    assert results["sst2 (by the mr head)"]["count"] == 40
    report = json.loads((tmp_path / "dann.json").read_text())
    assert report["target_test"] == results["sst2 (by the mr head)"]["accuracy"]
    assert 0.0 <= report["source_test"] <= 1.0 and report["scale"] == pytest.approx(0.1)


def test_bad_dann_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="same classes"):
        senteval_dann.get_config("mr,trec_coarse")
    config = senteval_dann.get_config("mr,sst2")
    config.dann.target = "mr"
    with pytest.raises(ConfigError, match="two different label fields"):
        dann.train(config, str(tmp_path))
    config.dann.update(target="sst2", scale=-1.0)
    with pytest.raises(ConfigError, match="scale must be >= 0"):
        dann.train(config, str(tmp_path))
