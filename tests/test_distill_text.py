"""Distillation on text: a fine-tuned (LoRA) BERT teacher run into a smaller BERT student."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import senteval_distill
from mtl.errors import ConfigError
from mtl.runs import distillation as distill
from mtl.runs import supervised
from mtl.tasks import tasks_from_config
from tests.conftest import TINY_BERT
from tests.test_finetune import SHAPE, tiny_config, tiny_data_and_budget

STUDENT = TINY_BERT | dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def student_config(teacher_dir, senteval_dir, senteval_tfds_dir):
    config = senteval_distill.get_config("mr")
    config.model.bert.update(STUDENT)
    config.teacher.workdir = teacher_dir
    return tiny_data_and_budget(config, senteval_dir, senteval_tfds_dir)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_ckpt, senteval_dir, senteval_tfds_dir) -> str:
    """A finished LoRA fine-tuning run of the tiny BERT on mr: the teacher of both tests."""
    workdir = str(tmp_path_factory.mktemp("distill") / "teacher")
    teacher = tiny_config(tiny_ckpt, senteval_dir, senteval_tfds_dir, "mr")
    teacher.finetune.strategy = "lora"
    teacher.finetune.lora.update(rank=2, alpha=4.0)
    teacher.optimizer.learning_rate = 1e-2  # so that the LoRA factors move in 4 steps
    supervised.train(teacher, workdir)
    return workdir


def test_text_student_learns_from_a_lora_teacher_run(
    tmp_path, teacher_dir, senteval_dir, senteval_tfds_dir
):
    # The teacher is rebuilt with its LoRA factors, and they change its outputs.
    tasks = tasks_from_config({"mr": dict(num_outputs=2)})
    apply, variables = distill.load_teacher(teacher_dir, SHAPE, tasks, teacher_dir)
    rng = np.random.default_rng(0)
    inputs = {
        "input_ids": rng.integers(1000, 2000, (4, 16)).astype(np.int32),
        "attention_mask": np.ones((4, 16), np.int32),
        "token_type_ids": np.zeros((4, 16), np.int32),
    }
    query = variables["params"]["trunk"]["layers"][0]["attention"]["query"]
    assert np.abs(query["lora_b"]).max() > 0
    without_lora = jax.tree_util.tree_map_with_path(
        lambda path, v: v * 0 if "lora_b" in jax.tree_util.keystr(path) else v, variables
    )
    assert not np.allclose(apply(variables, inputs)["mr"], apply(without_lora, inputs)["mr"])

    student_dir = str(tmp_path / "student")
    config = student_config(teacher_dir, senteval_dir, senteval_tfds_dir)
    results = distill.train(config, student_dir)["test"]
    assert set(results) == {"mr"} and results["mr"]["count"] == 40
    with open(os.path.join(student_dir, "finetune.json")) as f:
        info = json.load(f)
    assert info["restored"] == {} and info["steps_trained"] == 4  # from scratch, not the teacher
    # The student's tokenizer is the teacher's, kept in its workdir for later runs.
    assert os.path.isfile(os.path.join(student_dir, "tokenizer", "tokenizer.json"))
    assert distill.train(config, student_dir)["test"] == results  # resumes at the end


def test_a_student_with_another_tokenizer_is_refused(
    tmp_path, teacher_dir, senteval_dir, senteval_tfds_dir
):
    other = tmp_path / "other_tokenizer"
    shutil.copytree(os.path.join(teacher_dir, "tokenizer"), other)
    vocab = other / "tokenizer.json"
    vocab.write_text(vocab.read_text().replace('"[unused0]"', '"[unused_zero]"'))

    config = student_config(teacher_dir, senteval_dir, senteval_tfds_dir)
    config.data.tokenizer_dir = str(other)
    with pytest.raises(ConfigError, match="is not the teacher's"):
        distill.train(config, str(tmp_path / "student"))
    assert not (tmp_path / "student").exists()
