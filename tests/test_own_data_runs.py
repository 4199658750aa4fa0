"""Every kind of run on the user's own data: image folders stream through the loop (a resumed
run equals an uninterrupted one, bit for bit), and multi-task, meta-learning, sequential,
DANN and distillation runs take `image_folder` data, fine-tuning takes a `text_table`."""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest

from mtl import checkpoint
from mtl.runs import distillation, domain_adversarial, meta, sequential, supervised
from tests.own_data import write_table, write_tree
from tests.test_transfer import toy_supervised_config

TREES = {"shapes": {"ant": 12, "bee": 12}, "letters": {"x": 12, "y": 12, "z": 12}}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("own_data")
    out = {}
    for seed, (task, classes) in enumerate(TREES.items()):
        out[task] = str(base / task)
        write_tree(out[task], classes, seed)
    return out


def image_config(roots, num_steps: int, **data):
    config = toy_supervised_config(num_steps)
    config.batch_size = 8
    config.data = dict(name="image_folder", roots=roots, image_size=8, **data)
    config.tasks = {
        t: dict(head="classification", num_outputs=len(TREES.get(t, TREES["letters"])))
        for t in roots
    }
    config.input = dict(threads=2, prefetch=3)
    return config


def params(workdir) -> dict:
    return checkpoint.final_state(str(workdir))["params"]


def test_a_streamed_multitask_run_resumes_bit_equal_to_an_uninterrupted_one(tmp_path, roots):
    config = image_config(roots, num_steps=6)
    processes = copy.deepcopy(config)
    processes.input = dict(threads=1, workers=2)  # batches made in two worker processes
    whole = supervised.train(processes, str(tmp_path / "whole"))
    assert set(whole["test"]) == {"shapes", "letters"}
    assert whole["test"]["letters"]["count"] == 3 * 2  # round(20% of 12) of each class
    halfway = copy.deepcopy(config)
    halfway.num_steps = 3
    supervised.train(halfway, str(tmp_path / "resumed"))
    serial = copy.deepcopy(config)
    serial.input = dict(threads=0)  # no background threads on the second half: same batches
    supervised.train(serial, str(tmp_path / "resumed"))
    jax.tree.map(
        np.testing.assert_array_equal, params(tmp_path / "whole"), params(tmp_path / "resumed")
    )


def test_sequential_dann_and_distillation_take_image_folders(tmp_path, roots):
    config = image_config(roots, num_steps=2)
    config.trainer = "sequential"
    config.sequential = sequential.default_config()
    config.sequential.update(phases=("shapes", "letters"), ewc_strength=1.0, fisher_batch=8)
    assert set(sequential.train(config, str(tmp_path / "seq")).metrics) >= {"test"}

    both = {"source": roots["letters"], "target": roots["letters"]}
    config = image_config(both, num_steps=2)
    config.tasks = {"source": dict(head="classification", num_outputs=3)}
    config.trainer = "dann"
    config.dann = domain_adversarial.default_config()
    config.dann.update(source="source", target="target")
    results = domain_adversarial.train(config, str(tmp_path / "dann"))["test"]
    assert results["target (by the source head)"]["count"] > 0

    teacher = image_config({"letters": roots["letters"]}, num_steps=2)
    supervised.train(teacher, str(tmp_path / "teacher"))
    student = copy.deepcopy(teacher)
    student.trainer = "distill"
    student.teacher = dict(workdir=str(tmp_path / "teacher"))
    student.distill = distillation.default_config()
    assert distillation.train(student, str(tmp_path / "student"))["test"]["letters"]["count"] > 0


def test_protonets_meta_trains_on_an_image_folder(tmp_path, roots):
    from configs import omniglot_protonets

    config = omniglot_protonets.get_config()
    listed = dict(train=["x"], val=["y"], test=["z"])
    config.data = dict(name="image_folder", root=roots["letters"], image_size=8,
                       split_classes=listed, rotations=(0, 1, 2, 3))  # fmt: skip
    config.model.conv4.filters = 8
    config.num_steps = 2
    config.meta.update(ways=2, shots=1, queries=2, meta_batch=8)
    config.eval.update(ways=(2,), shots=(1,), queries=2, episodes=8, batch=8, val_every=0)
    config.baseline.joint = False
    config.input = dict(threads=2)
    results = meta.train(config, str(tmp_path / "meta")).metrics["meta_test"]
    assert results["method"] == "protonets"
    with pytest.raises(Exception, match="need 13 examples of each class"):
        config.meta.update(shots=1, queries=12)
        meta.train(config, str(tmp_path / "too_few"))
    assert not (tmp_path / "too_few").exists()


def test_finetuning_reads_a_text_table(tmp_path, tiny_ckpt):
    from configs import senteval_finetune
    from tests.conftest import TINY_BERT

    rows = [[f"{w} review number {i}", w] for i in range(12) for w in ("good", "bad")]
    table = write_table(str(tmp_path / "reviews.csv"), ["sentence", "polarity"], rows)
    config = senteval_finetune.get_config("mr")
    config.model.bert.update(TINY_BERT)
    config.init.checkpoint = tiny_ckpt
    config.data = dict(name="text_table", train=table, text_column="sentence", max_length=16,
                       tokenizer_dir=tiny_ckpt)  # fmt: skip
    config.tasks = {"polarity": dict(head="classification", num_outputs=2)}
    config.update(num_steps=3, batch_size=8, eval_batch_size=8)
    config.optimizer.warmup_steps = 1
    results = supervised.train(config, str(tmp_path / "ft"))["test"]
    assert results["polarity"]["count"] > 0


def test_example_configs_count_the_classes_of_the_users_data(tmp_path, roots):
    from configs import image_folder_mtl, image_folder_protonets, text_table_finetune

    config = image_folder_mtl.get_config(f"{roots['shapes']},{roots['letters']}")
    assert {t: config.tasks[t].num_outputs for t in config.tasks} == {"shapes": 2, "letters": 3}
    assert image_folder_protonets.get_config(roots["letters"]).data.root == roots["letters"]
    table = write_table(str(tmp_path / "t.jsonl"), ["text", "a", "b"],
                        [["one", "x", ""], ["two", "y", "p"], ["three", "z", "q"]])  # fmt: skip
    config = text_table_finetune.get_config(f"{table},a,b")
    assert (config.tasks.a.num_outputs, config.tasks.b.num_outputs) == (3, 2)
