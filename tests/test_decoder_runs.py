"""A Hugging Face decoder converted with `write_checkpoint` and fine-tuned by the engine on a
text table: a classification task on the last real token beside a causal-LM task."""

import json

import numpy as np

from mtl.convert import write_checkpoint
from mtl.data import text
from mtl.runs import supervised
from tests.own_data import write_table


def _tiny_llama(path, tokenizer_dir) -> str:
    import transformers as tf

    config = tf.LlamaConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=32,
                            max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
    # Any tokenizer of this vocabulary size; copied first, the model's config.json replaces its.
    text.copy_tokenizer(tokenizer_dir, str(path))
    tf.LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    return str(path)


def test_a_converted_decoder_fine_tunes_on_a_text_table(tmp_path, tiny_ckpt):
    from configs import senteval_finetune

    hf = _tiny_llama(tmp_path / "hf", tiny_ckpt)
    model = write_checkpoint(hf, str(tmp_path / "ckpt"))
    assert model["trunk"] == "decoder" and model["decoder"]["num_kv_heads"] == 2
    saved = json.loads((tmp_path / "ckpt" / "model.json").read_text())
    assert saved["decoder"] == model["decoder"]

    rows = [[f"{w} review number {i}", w] for i in range(12) for w in ("good", "bad")]
    table = write_table(str(tmp_path / "reviews.csv"), ["sentence", "polarity"], rows)
    config = senteval_finetune.get_config("mr")
    config.model.trunk = "decoder"
    config.model.decoder.update(model["decoder"])
    config.init.checkpoint = str(tmp_path / "ckpt")
    config.data = dict(name="text_table", train=table, text_column="sentence", max_length=16,
                       tokenizer_dir=str(tmp_path / "ckpt"))  # fmt: skip
    config.tasks = {
        "polarity": dict(head="classification", num_outputs=2),
        "lm": dict(head="causal_lm", num_outputs=30522, label="lm"),
    }
    config.update(num_steps=3, batch_size=8, eval_batch_size=8)
    config.optimizer.warmup_steps = 1
    workdir = tmp_path / "run"
    results = supervised.train(config, str(workdir))["test"]
    assert results["polarity"]["count"] > 0
    assert np.isfinite(results["lm"]["nll"]) and results["lm"]["count"] > 0
    info = json.loads((workdir / "finetune.json").read_text())
    assert info["restored"]["fresh"] == 0 and info["restored"]["loaded"] > 0
