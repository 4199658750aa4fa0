"""A causal-LM task in the engine: a decoder trunk learns next-token prediction (padding
masked), beside a classification task that reads the last real token."""

import numpy as np

from mtl.data.sources import MultiTaskData
from mtl.runs import supervised
from mtl.train.loop import run
from tests.test_transfer import toy_supervised_config


def _sequences(n: int, length: int = 10, seed: int = 0) -> dict:
    """Counting sequences (each token is the one before plus a per-sequence step) with random
    right padding; the class is the step."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(1, 3, n)
    starts = rng.integers(1, 20, n)
    ids = (starts[:, None] + steps[:, None] * np.arange(length)[None]) % 30 + 1
    lengths = rng.integers(4, length + 1, n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    inputs = {"input_ids": (ids * mask).astype(np.int32), "attention_mask": mask}
    return {"inputs": inputs, "labels": {"step": (steps - 1).astype(np.int32)},
            "masks": {"step": np.ones(n, bool)}}  # fmt: skip


def test_a_decoder_learns_next_tokens_and_a_class_from_the_last_token(tmp_path):
    config = toy_supervised_config(num_steps=120)
    config.model.trunk = "decoder"
    config.model.decoder = dict(vocab_size=32, hidden_size=32, num_layers=2, num_heads=4,
                                num_kv_heads=2, intermediate_size=64,
                                max_position_embeddings=16)  # fmt: skip
    config.tasks = {
        "lm": dict(head="causal_lm", num_outputs=32, label="lm"),
        "step": dict(head="classification", num_outputs=2, label="step"),
    }
    config.optimizer.learning_rate = 1e-2
    data = MultiTaskData(_sequences(256), _sequences(64, seed=1))
    parts = supervised.parts(config, data=data)
    result = run(supervised.experiment(parts), str(tmp_path))["test"]
    assert result["lm"]["next_token_accuracy"] > 0.5  # counting is learnable
    assert result["lm"]["nll"] < np.log(32) / 2
    assert result["step"]["accuracy"] > 0.9


def test_padding_changes_no_sequence_loss_and_other_trunks_are_refused():
    import jax.numpy as jnp
    import pytest

    from mtl.errors import ConfigError
    from mtl.models import build_model, causal_lm
    from mtl.tasks import tasks_from_config

    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 8)), jnp.float32)
    ids = np.array([[3, 1, 4, 1, 5, 2]])
    whole = causal_lm.lm_labels({"input_ids": ids, "attention_mask": np.ones((1, 6))})[0]
    padded = causal_lm.lm_labels({"input_ids": ids, "attention_mask": [[1, 1, 1, 1, 0, 0]]})[0]
    short = causal_lm.sequence_nll(logits[:, :4], jnp.asarray(whole[:, :4]))
    np.testing.assert_allclose(causal_lm.sequence_nll(logits, jnp.asarray(padded)), short)

    tasks = tasks_from_config({"lm": dict(head="causal_lm", num_outputs=8)})
    with pytest.raises(ConfigError, match="use model.trunk=decoder"):
        build_model({"trunk": "mlp", "mlp": {"hidden": (8,)}}, tasks, (4,), seed=0)
