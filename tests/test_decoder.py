"""The decoder trunk: parity with transformers' Llama / Mistral / Qwen2 / GPT-2, generation with
a key-value cache, the causal-LM loss, bfloat16 training, remat, sharding presets and LoRA.

Reference models are tiny transformers models built here with random weights (no download),
saved with `save_pretrained(safe_serialization=True)` and converted from that directory. Their
weights are redrawn larger than transformers' N(0, 0.02) so that attention is far from uniform:
with the default initialisation a wrong rotary or mask convention moves the logits by less
than the 1e-4 the parity tests allow.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mtl import parallel, sharding
from mtl.convert import hf_decoder
from mtl.convert.table import ConversionError, read_weights
from mtl.errors import DataError
from mtl.models import build_model
from mtl.models.causal_lm import causal_lm_loss
from mtl.models.generate import generate, generate_reference
from mtl.models.trunks.decoder import SHARDING_PRESETS, Decoder
from mtl.tasks import tasks_from_config
from mtl.transfer.lora import add_lora

VOCAB, LENGTH = 128, 12
# Our options for a tiny Llama with grouped-query attention (2 key/value heads for 4).
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)
# transformers configs (their field names) for the same sizes, by case.
HF_LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    rope_parameters={"rope_type": "default", "rope_theta": 500.0},
)
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=False)),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=4)),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        | dict(bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1),
    ),
}


def _redraw(model) -> None:
    """Larger random weights (see the module docstring); norms' scales around 1."""
    import torch

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)


@functools.cache
def hf_model(case: str, tmp_root: str):
    """(model, directory) of a tiny transformers model of `case`, saved as safetensors."""
    import transformers

    config_name, model_name, fields = CASES[case]
    fields = fields if case == "gpt2" else HF_LLAMA | fields
    config = getattr(transformers, config_name)(**fields)
    model = getattr(transformers, model_name)(config).eval()
    _redraw(model)
    path = f"{tmp_root}/{case}"
    model.save_pretrained(path, safe_serialization=True)
    return model, path


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf_decoders"))


def right_padded(seed: int = 0, rows: int = 3):
    """Random ids [rows, LENGTH], real lengths LENGTH, 7, 3, ... (the rest padding, id 0)."""
    rng = np.random.default_rng(seed)
    lengths = np.array([LENGTH, 7, 3, 10, 5, 12, 9, 4][:rows])
    mask = (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1, VOCAB, (rows, LENGTH)).astype(np.int32) * mask
    return ids, mask


def torch_logits(model, ids, mask) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    return out.logits.float().numpy()


@functools.cache
def tiny(**options) -> Decoder:
    """A tiny random decoder, built once per set of options (eager initialisation costs
    seconds); the tests that share one only read it."""
    return Decoder((), **TINY | options, rngs=nnx.Rngs(0))


# Jitted forward passes: one compilation per trunk structure and input shape, where eager calls
# would compile every operation.
@nnx.jit
def lm_logits(trunk: Decoder, inputs) -> jax.Array:
    return trunk.logits(trunk.encode(inputs))


@nnx.jit
def encode(trunk: Decoder, inputs) -> jax.Array:
    return trunk.encode(inputs)


@nnx.jit
def pooled_output(trunk: Decoder, inputs) -> jax.Array:
    return trunk(inputs)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_root):
    """Converted from the saved directory: logits of the real positions of a right-padded
    batch to 1e-4 (GQA, tied and untied heads, Qwen2's q/k/v biases, Mistral's window, GPT-2)."""
    model, path = hf_model(case, tmp_root)
    trunk = hf_decoder.load_decoder(path)
    ids, mask = right_padded()
    ours = np.asarray(lm_logits(trunk, {"input_ids": ids, "attention_mask": mask}))
    theirs = torch_logits(model, ids, mask)
    real = mask.astype(bool)
    assert np.abs(theirs[real]).max() > 1.0  # logits far from zero: the test can see errors
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
    assert ("lm_head" in nnx.state(trunk, nnx.Param)) == (case not in ("llama_tied", "gpt2"))


def test_from_torch_object_and_bare_model(tmp_root):
    """`decoder_from_torch` equals the directory's conversion; a bare `LlamaModel` (no LM head,
    untied) converts to a trunk without one, a bare `GPT2Model` too; hidden states match."""
    import torch
    from transformers import GPT2Model, LlamaModel

    model, path = hf_model("llama", tmp_root)
    ids, mask = right_padded()
    inputs = {"input_ids": ids, "attention_mask": mask}
    from_dir = hf_decoder.load_decoder(path)
    from_object = hf_decoder.decoder_from_torch(model)
    np.testing.assert_array_equal(from_dir.encode(inputs), from_object.encode(inputs))

    bare = LlamaModel.from_pretrained(path).eval()
    trunk = hf_decoder.decoder_from_torch(bare)
    assert trunk.lm_head is None
    with torch.no_grad():
        hidden = bare(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    real = mask.astype(bool)
    np.testing.assert_allclose(
        np.asarray(encode(trunk, inputs))[real], hidden.last_hidden_state.numpy()[real], atol=1e-4
    )
    with pytest.raises(ValueError, match="without an LM head"):
        trunk.logits(trunk.encode(inputs))

    # GPT-2's bare model: tied, so it keeps its logits; the hidden states match.
    _, path = hf_model("gpt2", tmp_root)
    bare = GPT2Model.from_pretrained(path).eval()
    trunk = hf_decoder.decoder_from_torch(bare)
    with torch.no_grad():
        hidden = bare(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    np.testing.assert_allclose(
        np.asarray(encode(trunk, inputs))[real], hidden.last_hidden_state.numpy()[real], atol=1e-4
    )


def test_pooled_output_is_the_last_real_token():
    """The pooled vector of a padded row is the last hidden state of the row alone, whether the
    batch is padded on the right or on the left."""
    trunk = tiny()
    ids, mask = right_padded()
    pooled = np.asarray(pooled_output(trunk, {"input_ids": ids, "attention_mask": mask}))
    assert pooled.shape == (3, 32)
    lengths = mask.sum(1)
    left = {
        "input_ids": np.stack([np.roll(r, LENGTH - n) for r, n in zip(ids, lengths, strict=True)]),
        "attention_mask": np.stack(
            [np.roll(r, LENGTH - n) for r, n in zip(mask, lengths, strict=True)]
        ),
    }
    np.testing.assert_allclose(pooled_output(trunk, left), pooled, atol=1e-5)
    n = lengths[1]
    alone = encode(trunk, {"input_ids": ids[1:2, :n], "attention_mask": mask[1:2, :n]})
    np.testing.assert_allclose(pooled[1], alone[0, -1], atol=1e-5)


@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_generation_with_cache_matches_without_and_transformers(case, tmp_root):
    """Greedy: with the cache = recomputed from scratch = transformers' `generate` on the same
    left-padded prompts; sampling with top-k and top-p: with the cache = without."""
    import torch

    model, path = hf_model(case, tmp_root)
    trunk = hf_decoder.load_decoder(path)
    ids, mask = right_padded(seed=1)
    new, eos = 6, model.generation_config.eos_token_id
    cached = np.asarray(generate(trunk, ids, mask, max_new_tokens=new, eos_token_id=eos))
    reference = generate_reference(trunk, ids, mask, max_new_tokens=new, eos_token_id=eos)
    np.testing.assert_array_equal(cached, reference)

    # transformers generates from left-padded prompts (positions from the attention mask),
    # pads finished rows with pad_token_id and stops when all rows are finished.
    lengths = mask.sum(1)
    left_ids = np.stack([np.roll(r, LENGTH - n) for r, n in zip(ids, lengths, strict=True)])
    left_mask = np.stack([np.roll(r, LENGTH - n) for r, n in zip(mask, lengths, strict=True)])
    with torch.no_grad():
        theirs = model.generate(
            input_ids=torch.tensor(left_ids).long(),
            attention_mask=torch.tensor(left_mask).long(),
            do_sample=False,
            max_new_tokens=new,
            eos_token_id=eos,
            pad_token_id=0,
        )[:, LENGTH:].numpy()
    assert theirs.shape[1] >= 3
    np.testing.assert_array_equal(cached[:, : theirs.shape[1]], theirs)

    options = dict(max_new_tokens=new, temperature=0.8, top_k=20, top_p=0.9, key=jax.random.key(3))
    sampled = np.asarray(generate(trunk, ids, mask, **options))
    np.testing.assert_array_equal(sampled, generate_reference(trunk, ids, mask, **options))


def test_generation_stops_rows_at_eos():
    trunk = tiny()
    ids, mask = right_padded(seed=2)
    free = np.asarray(generate(trunk, ids, mask, max_new_tokens=5))
    eos = int(free[0, 1])
    stopped = np.asarray(generate(trunk, ids, mask, max_new_tokens=5, eos_token_id=eos))
    for free_row, row in zip(free, stopped, strict=True):
        hits = np.flatnonzero(free_row == eos)
        end = hits[0] + 1 if hits.size else 5
        np.testing.assert_array_equal(row[:end], free_row[:end])
        assert (row[end:] == 0).all()


def test_conversion_errors_in_one_error_and_unsupported_configs(tmp_root):
    _, path = hf_model("gpt2", tmp_root)
    weights = dict(read_weights(path))
    weights["score.weight"] = np.zeros((2, 32), np.float32)  # a classifier head
    del weights["transformer.h.1.mlp.c_fc.bias"]
    weights["transformer.h.0.attn.c_attn.weight"] = np.zeros((32, 93), np.float32)
    config = hf_decoder.read_config(path)
    with pytest.raises(ConversionError) as error:
        hf_decoder.build(config, weights)
    message = str(error.value)
    assert "left over (1)" in message and "score.weight" in message
    assert "h.1.mlp.c_fc.bias (for layers/1/intermediate/bias)" in message
    assert "h.0.attn.c_attn.weight (32, 93) -> layers/0/attention/query/kernel" in message
    # Dropping the head on purpose leaves the other two problems.
    with pytest.raises(ConversionError, match="Shape mismatches") as error:
        hf_decoder.build(config, weights, drop=[r"^score\."])
    assert "left over" not in str(error.value)

    llama = {"model_type": "llama", **HF_LLAMA}
    for changes, named in [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling of type 'linear'"),
        ({"rope_parameters": {"rope_type": "yarn"}}, "rope_parameters of type 'yarn'"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
        ({"model_type": "falcon"}, "model_type is 'falcon'"),
    ]:
        with pytest.raises(DataError, match=named):
            hf_decoder.check_config(llama | changes)
    with pytest.raises(DataError, match="activation_function 'relu'"):
        hf_decoder.check_config({"model_type": "gpt2", "activation_function": "relu"})


def test_causal_lm_loss_ignores_padding():
    trunk = tiny()
    ids, mask = right_padded()
    row, n = 1, int(mask[1].sum())

    def loss(ids, mask):
        return causal_lm_loss(
            lm_logits(trunk, {"input_ids": ids, "attention_mask": mask}), ids, mask
        )

    one_ids, one_mask = ids[row : row + 1], mask[row : row + 1]
    alone = loss(one_ids[:, :n], one_mask[:, :n])
    right = loss(one_ids, one_mask)
    left = loss(np.roll(one_ids, LENGTH - n), np.roll(one_mask, LENGTH - n))
    np.testing.assert_allclose([right, left], [alone, alone], rtol=1e-5)
    # By hand: mean -log p(token t+1 | tokens <= t) over the n - 1 targets.
    logits = lm_logits(trunk, {"input_ids": one_ids[:, :n], "attention_mask": one_mask[:, :n]})
    log_probs = jax.nn.log_softmax(logits[0, :-1])
    by_hand = -np.mean([log_probs[t, ids[row, t + 1]] for t in range(n - 1)])
    np.testing.assert_allclose(alone, by_hand, rtol=1e-5)


def _lm_loss(graphdef, params, rest, batch):
    model = nnx.merge(graphdef, params, rest)
    logits = model.logits(model.encode(batch, train=True))
    return causal_lm_loss(logits, batch["input_ids"], batch["attention_mask"])


def test_bfloat16_training_lowers_the_loss_and_keeps_float32_params():
    trunk = Decoder((), **TINY, dtype="bfloat16", rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(trunk, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    ids, mask = right_padded(rows=4)
    batch = {"input_ids": ids, "attention_mask": mask}
    optimizer = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(_lm_loss, argnums=1)(graphdef, params, rest, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(10):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    model = nnx.merge(graphdef, params, rest)
    hidden = model.encode(batch)
    assert hidden.dtype == jnp.bfloat16 and model.logits(hidden).dtype == jnp.float32


def _grads(trunk, batch):
    graphdef, params, rest = nnx.split(trunk, nnx.Param, ...)
    grad = jax.jit(jax.value_and_grad(_lm_loss, argnums=1), static_argnums=0)
    return grad(graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest), batch)


def test_remat_gives_the_same_gradients():
    ids, mask = right_padded()
    batch = {"input_ids": ids, "attention_mask": mask}
    plain = _grads(tiny(), batch)
    remat = _grads(tiny(remat=True), batch)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), plain, remat)


@pytest.mark.parametrize(
    "preset, mesh_config, axis",
    [("decoder_fsdp", {"data": 2, "fsdp": 4}, "fsdp"), ("decoder_megatron", {"model": 2}, "model")],
)
def test_sharding_presets_keep_loss_and_gradients(preset, mesh_config, axis):
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    trunk = tiny(tie_embeddings=False)
    ids, mask = right_padded(rows=8)
    batch = {"input_ids": ids, "attention_mask": mask}
    ref_loss, ref_grads = _grads(trunk, batch)

    mesh = parallel.make_mesh(mesh_config)
    graphdef, params, rest = nnx.split(trunk, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    rules = SHARDING_PRESETS[preset]
    shardings = sharding.tree_shardings({"params": {"trunk": params}}, rules, mesh)
    params = jax.device_put(params, shardings["params"]["trunk"])
    for path in ("embeddings/word/embedding", "lm_head/kernel", "layers/1/attention/key/kernel",
                 "layers/1/gate_intermediate/kernel", "layers/0/output/kernel"):  # fmt: skip
        leaf = functools.reduce(
            lambda t, k: t[int(k) if k.isdigit() else k], path.split("/"), params
        )
        assert axis in str(leaf.sharding.spec), path
        assert leaf.addressable_shards[0].data.size < leaf.size, path
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    grad = jax.jit(jax.value_and_grad(_lm_loss, argnums=1), static_argnums=0)
    loss, grads = grad(graphdef, params, nnx.to_pure_dict(rest), batch)
    np.testing.assert_allclose(loss, ref_loss, atol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), ref_grads, jax.device_get(grads)
    )


def test_engine_model_and_lora_wrap_attention_and_mlp_and_start_at_the_base_model():
    """Built by the engine from its config (the trunk's options as `model.decoder.*`, a
    classification head on the pooled output), then given LoRA with the default targets: all
    seven linears of each block are wrapped, the LM head is not, and outputs do not move."""
    tasks = tasks_from_config({"topic": dict(head="classification", num_outputs=3)})
    shape = {"input_ids": (LENGTH,), "attention_mask": (LENGTH,)}
    config = {"trunk": "decoder", "decoder": TINY | {"tie_embeddings": False}}
    model = build_model(config, tasks, shape, seed=0)
    ids, mask = right_padded()
    inputs = {"input_ids": ids, "attention_mask": mask}
    scores = np.asarray(model(inputs)["topic"])
    logits = np.asarray(lm_logits(model.trunk, inputs))
    assert scores.shape == (3, 3)
    wrapped = add_lora(model.trunk, rank=2, alpha=4.0, rngs=nnx.Rngs(1))
    names = ["attention/query", "attention/key", "attention/value", "attention/output"]
    names += ["gate_intermediate", "intermediate", "output"]
    assert sorted(wrapped) == sorted(f"layers/{i}/{n}" for i in range(2) for n in names)
    np.testing.assert_allclose(model(inputs)["topic"], scores, atol=1e-6)
    np.testing.assert_allclose(lm_logits(model.trunk, inputs), logits, atol=1e-6)
