"""Prompt tuning: soft prompt vectors before a frozen bert trunk's tokens; only they and the
heads train, initialised from the restored vocabulary."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtl import checkpoint
from mtl.errors import ConfigError
from mtl.models.trunks.bert import Bert
from mtl.runs import supervised
from mtl.transfer import prompt, restore
from tests.conftest import TINY_BERT
from tests.test_finetune import converted_trunk, flat, tiny_config


def test_a_prompt_is_context_the_tokens_attend_to():
    trunk = Bert((), rngs=nnx.Rngs(0), **TINY_BERT, dropout=0.0, attention_dropout=0.0)
    inputs = {
        "input_ids": jnp.asarray([[101, 2000, 2001, 102], [101, 2003, 102, 0]]),
        "attention_mask": jnp.asarray([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }
    plain = np.asarray(trunk.encode(inputs))
    prompt.add_prompt(trunk, length=3, init="random", rngs=nnx.Rngs(1))
    prompted = np.asarray(trunk.encode(inputs))
    assert prompted.shape == plain.shape  # the prompt's own positions are not returned
    assert np.abs(prompted - plain).max() > 1e-3  # but every token attends to them
    assert trunk(inputs).shape == (2, TINY_BERT["hidden_size"])

    with pytest.raises(ConfigError, match="exceed the model's 64 positions"):
        trunk.encode({k: jnp.ones((1, 62), jnp.int32) for k in inputs})
    with pytest.raises(ConfigError, match="finetune.prompt_tuning.init must be one of"):
        prompt.add_prompt(trunk, length=3, init="text", rngs=nnx.Rngs(1))


def test_prompt_tuning_trains_only_the_prompt_and_heads(
    tmp_path, tiny_ckpt, senteval_dir, senteval_tfds_dir
):
    config = tiny_config(tiny_ckpt, senteval_dir, senteval_tfds_dir, tasks="mpqa")
    config.finetune.strategy = "prompt_tuning"
    config.finetune.prompt_tuning.update(length=4, init="vocab")
    config.optimizer.learning_rate = 0.1
    workdir = str(tmp_path / "run")
    results = supervised.train(config, workdir)["test"]
    assert results["mpqa"]["count"] == 40
    with open(os.path.join(workdir, "finetune.json")) as f:
        info = json.load(f)
    assert info["trainable_params"] == 4 * 32 + 32 * 2 + 2  # the prompt and the head
    assert info["restored"]["fresh"] == 1  # trunk/prompt/embedding

    source = restore.find_source(workdir)
    shapes = checkpoint.tree_shapes(source.params_path, source.select)
    trained = flat(checkpoint.read_subtree(source.params_path, source.select, shapes))
    converted = converted_trunk(tiny_ckpt)
    for path, value in trained.items():
        if not path.startswith("prompt/"):
            np.testing.assert_array_equal(value, converted[path], err_msg=path)
    # Initialised from rows of the restored word embeddings, then trained away from them.
    words = converted["embeddings/word/embedding"]
    init = prompt.init_from_vocabulary(
        {"embeddings": {"word": {"embedding": words}}, "prompt": {"embedding": np.zeros((4, 32))}},
        config.seed + 1,
    )["prompt"]["embedding"]
    for row in np.asarray(init):
        assert np.any(np.all(words == row, axis=1))
    assert np.abs(trained["prompt/embedding"] - np.asarray(init)).max() > 0


def test_a_decoder_takes_a_prompt_before_its_tokens():
    from mtl.models.trunks.decoder import Decoder

    trunk = Decoder(vocab_size=64, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=32, max_position_embeddings=32, rngs=nnx.Rngs(0))  # fmt: skip
    inputs = {
        "input_ids": jnp.asarray([[5, 6, 7, 8], [9, 10, 0, 0]]),
        "attention_mask": jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0]]),
    }
    plain = np.asarray(trunk(inputs))
    prompt.add_prompt(trunk, length=3, init="random", rngs=nnx.Rngs(1))
    prompted = np.asarray(trunk(inputs))
    assert prompted.shape == plain.shape == (2, 16)
    assert np.abs(prompted - plain).max() > 1e-3
    assert trunk.logits(trunk.encode(inputs)).shape == (2, 4, 64)
    trained = prompt.init_from_vocabulary(nnx.to_pure_dict(nnx.state(trunk, nnx.Param)), seed=0)[
        "prompt"
    ]["embedding"]
    words = np.asarray(trunk.embeddings.word.embedding[...])
    assert all(np.any(np.all(words == row, axis=1)) for row in np.asarray(trained))
