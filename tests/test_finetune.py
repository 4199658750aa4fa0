"""Partial restore and the fine-tuning loop, from a converted tiny BERT on real SentEval data."""

import json
import os
import time

import numpy as np
import pytest
from flax import nnx

from configs import senteval_finetune
from mtl import checkpoint
from mtl.errors import ConfigError
from mtl.models import build_model
from mtl.runs import get_trainer, supervised
from mtl.tasks import tasks_from_config
from mtl.transfer import lora, restore
from tests.conftest import TINY_BERT

SHAPE = {"input_ids": (16,), "attention_mask": (16,), "token_type_ids": (16,)}


def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def converted_trunk(tiny_ckpt):
    shapes = checkpoint.tree_shapes(os.path.join(tiny_ckpt, "params"), ("trunk",))
    return flat(checkpoint.read_subtree(os.path.join(tiny_ckpt, "params"), ("trunk",), shapes))


def new_model(seed=3, **options):
    tasks = tasks_from_config({"sst5": dict(num_outputs=5)})
    config = {"trunk": "bert", "bert": TINY_BERT | options}
    return build_model(config, tasks, SHAPE, seed)


def test_partial_restore_loads_trunk_and_keeps_new_parts_fresh(tiny_ckpt):
    model = new_model()
    lora.add_lora(model.trunk, rank=2, alpha=2.0, rngs=nnx.Rngs(5))
    fresh_heads = flat(nnx.to_pure_dict(nnx.state(model.heads, nnx.Param)))
    report = restore.restore_trunk(model.trunk, restore.find_source(tiny_ckpt))
    assert report["skipped"] == ["pooler/bias", "pooler/kernel"]  # pooling="mean"
    assert len(report["fresh"]) == 2 * 6 * 2 and all("lora_" in p for p in report["fresh"])
    trunk = flat(nnx.to_pure_dict(nnx.state(model.trunk, nnx.Param)))
    saved = converted_trunk(tiny_ckpt)
    assert sorted(report["loaded"]) == sorted(p for p in saved if not p.startswith("pooler"))
    for path in report["loaded"]:
        np.testing.assert_array_equal(trunk[path], saved[path], err_msg=path)
    for path in report["fresh"]:
        if path.endswith("lora_b"):
            np.testing.assert_array_equal(trunk[path], 0.0)
    heads = flat(nnx.to_pure_dict(nnx.state(model.heads, nnx.Param)))
    for path, value in fresh_heads.items():
        np.testing.assert_array_equal(heads[path], value)


def test_partial_restore_lists_every_mismatch(tiny_ckpt):
    source = restore.find_source(tiny_ckpt)
    model = new_model(num_layers=3, intermediate_size=48)
    with pytest.raises(ConfigError) as error:
        restore.restore_trunk(model.trunk, source)
    message = str(error.value)
    assert "layers/0/intermediate/kernel: checkpoint (32, 64), model (32, 48)" in message
    assert "model parameters the checkpoint lacks (16)" in message and "layers/2/" in message
    config = {"trunk": "bert", "bert": TINY_BERT | {"num_layers": 3}}
    from mtl.models.trunks.bert import ARCHITECTURE

    with pytest.raises(ConfigError, match=r"--config\.model\.bert\.num_layers=2"):
        restore.check_architecture(config, source, ARCHITECTURE)
    with pytest.raises(Exception, match="neither a converted checkpoint"):
        restore.find_source(os.path.dirname(tiny_ckpt))


def tiny_data_and_budget(config, senteval_dir, senteval_tfds_dir):
    """A few SentEval sentences, 16 tokens each, and 4 train steps of 8: seconds per run."""
    config.data.update(
        data_dir=senteval_dir,
        tfds_dir=senteval_tfds_dir,
        max_length=16,
        max_train_examples=32,
        max_test_examples=40,
    )
    config.num_steps = 4
    config.batch_size = 8
    config.eval_batch_size = 16
    config.log_every = 2
    config.optimizer.warmup_steps = 1
    return config


def tiny_config(tiny_ckpt, senteval_dir, senteval_tfds_dir, tasks="trec_coarse,mpqa"):
    config = senteval_finetune.get_config(tasks)
    config.model.bert.update(TINY_BERT)
    config.init.checkpoint = tiny_ckpt
    return tiny_data_and_budget(config, senteval_dir, senteval_tfds_dir)


def test_lora_run_resume_and_restore_from_its_workdir(
    tmp_path, tiny_ckpt, senteval_dir, senteval_tfds_dir
):
    config = tiny_config(tiny_ckpt, senteval_dir, senteval_tfds_dir)
    config.finetune.strategy = "lora"
    config.finetune.lora.update(rank=2, alpha=4.0)
    workdir = str(tmp_path / "run")
    assert get_trainer("finetune") is supervised.train
    results = supervised.train(config, workdir)["test"]
    assert set(results) == {"trec_coarse", "mpqa"}
    assert results["mpqa"]["count"] == 40 and 0.0 <= results["mpqa"]["accuracy"] <= 1.0
    with open(os.path.join(workdir, "finetune.json")) as f:
        info = json.load(f)
    assert info["restored"] == {
        "loaded": 37,
        "fresh": 24,
        "skipped": 2,
        "merged": 0,
        "statistics": 0,
    }
    assert info["lora_layers"] == 12
    heads = 32 * 6 + 6 + 32 * 2 + 2
    # rank 2: q, k, v, attention output are 32 -> 32; intermediate 32 -> 64, output 64 -> 32
    assert info["trainable_params"] == heads + 8 * 2 * (32 + 32) + 4 * 2 * (32 + 64)
    assert os.path.isfile(os.path.join(workdir, "tokenizer", "tokenizer.json"))

    # Only the LoRA factors and heads moved: the base weights are the converted ones.
    source = restore.find_source(workdir)
    assert source.select == ("params", "trunk") and source.lora_scale == 2.0
    shapes = checkpoint.tree_shapes(source.params_path, source.select)
    trained = flat(checkpoint.read_subtree(source.params_path, source.select, shapes))
    converted = converted_trunk(tiny_ckpt)
    for path, value in trained.items():
        if "lora_" not in path:
            np.testing.assert_array_equal(value, converted[path], err_msg=path)
    assert np.abs(trained["layers/0/attention/query/lora_b"]).max() > 0

    # The same command again resumes at the end: no training, the same results.
    again = supervised.train(config, workdir)["test"]
    assert again == results
    with open(os.path.join(workdir, "finetune.json")) as f:
        assert json.load(f)["steps_trained"] == 0

    # A new model with a new task starts from that run: LoRA factors merged into the kernels.
    model = new_model()
    report = restore.restore_trunk(model.trunk, source)
    assert len(report["merged"]) == 24 and report["fresh"] == []
    kernel = nnx.to_pure_dict(nnx.state(model.trunk, nnx.Param))["layers"][1]["output"]["kernel"]
    expected = converted["layers/1/output/kernel"] + 2.0 * (
        trained["layers/1/output/lora_a"] @ trained["layers/1/output/lora_b"]
    )
    np.testing.assert_allclose(kernel, expected, rtol=1e-6)


def test_bad_config_fails_before_any_work(tmp_path, tiny_ckpt, senteval_dir, senteval_tfds_dir):
    config = tiny_config(tiny_ckpt, senteval_dir, senteval_tfds_dir)
    config.model.bert.hidden_size = 64
    workdir = tmp_path / "run"
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"--config\.model\.bert\.hidden_size=32"):
        supervised.train(config, str(workdir))
    assert time.perf_counter() - start < 5 and not workdir.exists()
    config = tiny_config(tiny_ckpt, senteval_dir, senteval_tfds_dir)
    config.finetune.strategy = "linear_probe"
    with pytest.raises(ConfigError, match="Unknown fine-tuning strategy 'linear_probe'"):
        supervised.train(config, str(workdir))
    config = tiny_config(tiny_ckpt, senteval_dir, senteval_tfds_dir)
    config.init.checkpoint = str(tmp_path / "missing")
    with pytest.raises(Exception, match="does not exist"):
        supervised.train(config, str(workdir))
    assert not workdir.exists()


def test_multitask_feature_extraction_with_a_weighting(
    tmp_path, tiny_ckpt, senteval_dir, senteval_tfds_dir
):
    """Three tasks, DWA weighting, frozen trunk: only the heads differ from the converted model."""
    config = tiny_config(tiny_ckpt, senteval_dir, senteval_tfds_dir, "mr,trec_coarse,trec_fine")
    config.finetune.strategy = "feature_extraction"
    config.weighting.name = "dwa"
    workdir = str(tmp_path / "mtl")
    results = supervised.train(config, workdir)["test"]
    assert set(results) == {"mr", "trec_coarse", "trec_fine"}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    assert {"train/weight/mr", "train/loss/trec_fine"} <= set(metrics[0])
    source = restore.find_source(workdir)
    shapes = checkpoint.tree_shapes(source.params_path, source.select)
    trained = flat(checkpoint.read_subtree(source.params_path, source.select, shapes))
    converted = converted_trunk(tiny_ckpt)
    for path, value in trained.items():
        np.testing.assert_array_equal(value, converted[path], err_msg=path)


def test_partial_restore_of_a_wrong_shaped_weight_loads_nothing(tiny_ckpt, tmp_path):
    """A converted checkpoint with one array of the wrong shape (its model.json unchanged)."""
    import shutil

    ckpt = tmp_path / "converted"
    shutil.copytree(tiny_ckpt, ckpt, ignore=shutil.ignore_patterns("params"))
    params = converted_trunk(tiny_ckpt)
    params["layers/1/intermediate/kernel"] = params["layers/1/intermediate/kernel"][:, :-1]
    trunk = {}
    for path, value in params.items():
        node = trunk
        *parents, last = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    checkpoint.write_tree(str(ckpt / "params"), {"trunk": trunk})
    source = restore.find_source(str(ckpt))
    restore.check_architecture({"trunk": "bert", "bert": TINY_BERT}, source, TINY_BERT)

    model = new_model()
    before = flat(nnx.to_pure_dict(nnx.state(model.trunk, nnx.Param)))
    with pytest.raises(ConfigError) as error:
        restore.restore_trunk(model.trunk, source)
    message = str(error.value)
    assert (
        "shape mismatches (1): layers/1/intermediate/kernel: checkpoint (32, 63), model (32, 64)"
        in message
    )
    assert "convert the weights again" in message and "Nothing was loaded." in message
    after = flat(nnx.to_pure_dict(nnx.state(model.trunk, nnx.Param)))
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_the_tokenizer_defaults_to_the_checkpoint_and_overrides_leave_it_alone():
    from mtl.data import text

    config = senteval_finetune.get_config("mr")
    config.init.checkpoint = "/runs/ft_mr"
    config.data.tokenizer_dir = "/models/minilm"  # used to re-point init.checkpoint too
    assert config.init.checkpoint == "/runs/ft_mr"
    text.default_tokenizer_dir(config.data, config.init.checkpoint)
    assert config.data.tokenizer_dir == "/models/minilm"
    config.data.tokenizer_dir = None
    text.default_tokenizer_dir(config.data, config.init.checkpoint)
    assert config.data.tokenizer_dir == "/runs/ft_mr"
