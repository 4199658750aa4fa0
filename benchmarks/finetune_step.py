"""Our fine-tuning step against the same step in transformers' PyTorch BertModel, one process.

    python -m benchmarks.finetune_step                      # MiniLM, batch 32, 128 tokens
    python -m benchmarks.finetune_step --seq_len=64 --rounds=7 --dropout=0.0
    python -m benchmarks.finetune_step --rounds=1 --profile   # where both steps spend their time

Both sides start from the same all-MiniLM-L6-v2 weights (ours converted with `mtl.convert`)
and run one full fine-tuning step: embeddings + 6 layers with dropout, mean pooling over real
tokens, a linear head, softmax cross-entropy, backward, AdamW on every parameter (with global
norm clipping at 1.0 on both sides). Ours is the step the fine-tuning loop runs
(`mtl.runs.supervised_step.make_steps` with the `full` strategy's optimizer), jitted with the
state donated; PyTorch runs eagerly with all CPU threads. The batch has padding (lengths drawn
in [seq_len / 2, seq_len]) and is identical for both; tokens per second count padded positions.

Timings alternate between the two in `--rounds` rounds of `--steps` steps after warm-up, and
the medians are compared, so load from other processes hits both alike.
`--precision=float32,bfloat16` times both: ours with the trunk in bfloat16 (float32
parameters), PyTorch under `torch.autocast`.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time

from absl import flags

from benchmarks import precision, torch_device
from mtl import allocator, entry

_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per sentence (padded).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (each side once per round).")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps per side per round.")
_DROPOUT = flags.DEFINE_float("dropout", 0.1, "Hidden and attention dropout on both sides.")
_THREADS = flags.DEFINE_integer("torch_threads", 0, "PyTorch threads (0: all CPU cores).")
_PROFILE = flags.DEFINE_bool("profile", False, "Then print where both steps spend their time.")
_MODEL = flags.DEFINE_enum(
    "model",
    "minilm",
    ["minilm", "base", "tiny"],
    "all-MiniLM-L6-v2, or BERT-base-sized random weights, or a 2-layer 64-wide random BERT "
    "(the device check's CPU mode: it only has to run).",
)
_PEAK = flags.DEFINE_float(
    "peak_tflops", 0.0, "The device's peak bfloat16 TFLOP/s, for model FLOPs utilisation."
)
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (_BATCH, _SEQ, _ROUNDS, _STEPS, _DROPOUT, _THREADS, _PROFILE, _MODEL, _PEAK):
    flags.FLAGS[_holder.name].allow_override = True

NUM_CLASSES = 2
LR = 5e-5
MODELS = {
    "minilm": "all-MiniLM-L6-v2",
    "base": "BERT-base-sized (random weights)",
    "tiny": "2-layer 64-wide BERT (random weights)",
}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def random_bert_dir(folder: str, **sizes) -> str:
    """A BERT encoder with random weights, saved as a Hugging Face directory in `folder`:
    nothing is downloaded. No `sizes`: BERT-base (768 wide, 12 layers; transformers' default
    BertConfig)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**sizes)).save_pretrained(folder)
    return folder


def model_flops_per_token(hf_dir: str, seq: int) -> float:
    """Training FLOPs per token: 6 x the non-embedding parameters plus attention's
    12 x layers x hidden x sequence length (the PaLM paper's count)."""
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    per_layer = 4 * hidden * hidden + 2 * hidden * config["intermediate_size"]
    return 6 * layers * per_layer + 12 * layers * hidden * seq


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, vocab, size=(batch, seq)).astype(np.int32) * mask
    ids[:, 0] = 101  # [CLS]
    labels = rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}, labels


def ours(hf_dir: str, inputs, labels, dropout: float, dtype: str = "float32"):
    """`(run, hlo_text, compile_s)`: `run(n)` takes n of our compiled fine-tuning steps on the
    converted weights; `hlo_text` is the compiled step's HLO; `compile_s` the seconds lowering
    and compiling it took."""
    import jax
    import numpy as np
    from flax import nnx

    from configs import senteval_finetune
    from mtl.convert import load_bert
    from mtl.models.heads import HEADS
    from mtl.models.multitask import MultiTaskModel
    from mtl.runs.supervised_step import make_steps
    from mtl.tasks import tasks_from_config
    from mtl.transfer import strategies
    from mtl.weighting import get_weighting

    trunk = load_bert(
        hf_dir, dropout=dropout, attention_dropout=dropout, pooling="mean", dtype=dtype
    )
    tasks = tasks_from_config({"task": dict(head="classification", num_outputs=NUM_CLASSES)})
    head = HEADS.get("classification")(trunk.out_features, NUM_CLASSES, rngs=nnx.Rngs(1))
    model = MultiTaskModel(trunk, {"task": head})
    config = senteval_finetune.get_config("mr")
    config.optimizer.learning_rate = LR
    config.optimizer.schedule = "constant"
    pure = lambda m: nnx.to_pure_dict(nnx.state(m, nnx.Param))
    params = {"trunk": pure(trunk), "heads": {"task": pure(head)}}
    plan = strategies.plan(strategies.default_config(), params)  # "full"
    optimizer = strategies.make_optimizer(plan, config.optimizer, 1000)
    steps = make_steps(model, tasks, optimizer, get_weighting("equal"), seed=0)
    batch = {
        "inputs": {k: jax.device_put(v) for k, v in inputs.items()},
        "labels": {"task": jax.device_put(labels)},
        "masks": {"task": jax.device_put(np.ones(len(labels), bool))},
    }
    state = jax.jit(steps.init)()
    started = time.perf_counter()
    step = jax.jit(steps.train_step, donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - started

    def run(n: int):
        nonlocal state
        for _ in range(n):
            state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))

    return run, step.as_text(), compile_s


def peer(hf_dir: str, inputs, labels, dropout: float, dtype: str = "float32"):
    """The same step in PyTorch on transformers' BertModel."""
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(
        hf_dir,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        add_pooling_layer=False,
    )
    model.train()
    device = torch_device.device()
    model.to(device)
    head = torch.nn.Linear(model.config.hidden_size, NUM_CLASSES).to(device)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    batch = torch_device.put({k: torch.tensor(v, dtype=torch.long) for k, v in inputs.items()})
    target = torch_device.put(torch.tensor(labels, dtype=torch.long))
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def run(n: int):
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast(dtype):
                hidden = model(**batch).last_hidden_state
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                loss = torch.nn.functional.cross_entropy(head(pooled).float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        torch_device.synchronize()

    return run


def main(argv):
    del argv
    import jax
    import torch
    import transformers

    from mtl.convert import package_dir

    torch.set_num_threads(_THREADS.value or os.cpu_count())
    if _MODEL.value == "minilm":
        hf_dir = package_dir()
    else:
        sizes = TINY if _MODEL.value == "tiny" else {}
        hf_dir = random_bert_dir(tempfile.mkdtemp(), **sizes)
    inputs, labels = make_batch(_BATCH.value, _SEQ.value, vocab=30522)
    tokens = _BATCH.value * _SEQ.value
    sides, hlo_texts, compile_s = {}, {}, {}
    for dtype in precision.PRECISION.value:
        name = f"ours {dtype}"
        sides[name], hlo_texts[name], compile_s[name] = ours(
            hf_dir, inputs, labels, _DROPOUT.value, dtype
        )
        sides[f"PyTorch {dtype}"] = peer(hf_dir, inputs, labels, _DROPOUT.value, dtype)
    for run in sides.values():  # compile / warm up
        run(2)
    times = {name: [] for name in sides}
    for _ in range(_ROUNDS.value):
        for name, run in sides.items():
            start = time.perf_counter()
            run(_STEPS.value)
            times[name].append((time.perf_counter() - start) / _STEPS.value)
    print(
        f"Fine-tuning step, {MODELS[_MODEL.value]} + linear head, batch {_BATCH.value} x "
        f"{_SEQ.value} tokens, dropout {_DROPOUT.value}, AdamW; {os.cpu_count()} CPU cores; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} on "
        f"{torch_device.device()} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}; median of {_ROUNDS.value} rounds x "
        f"{_STEPS.value} steps; malloc: {allocator.current_allocator()}."
    )
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    flops = model_flops_per_token(hf_dir, _SEQ.value) * tokens
    for name, median in medians.items():
        spread = ", ".join(f"{t:.2f}" for t in times[name])
        used = flops / median / 1e12
        mfu = f", MFU {100 * used / _PEAK.value:.1f}%" if _PEAK.value else ""
        compiled = f", compile {compile_s[name]:.1f} s" if name in compile_s else ""
        print(
            f"  {name:<16s} {median:7.3f} s/step  {tokens / median:9.0f} tokens/s  "
            f"{used:7.2f} model TFLOP/s{mfu}{compiled}  ({spread})"
        )
    for dtype in precision.PRECISION.value:
        ratio = medians[f"PyTorch {dtype}"] / medians[f"ours {dtype}"]
        print(f"  ratio {dtype} (ours tokens/s / PyTorch tokens/s): {ratio:.2f}")
    if _PROFILE.value:
        from benchmarks import torch_ops, xla_ops

        for dtype in precision.PRECISION.value:
            report = xla_ops.report(
                sides[f"ours {dtype}"], _STEPS.value, hlo_text=hlo_texts[f"ours {dtype}"]
            )
            print(f"\nours ({dtype}):\n{report}")
            print(
                f"PyTorch ({dtype}):\n{torch_ops.report(sides[f'PyTorch {dtype}'], _STEPS.value)}"
            )


if __name__ == "__main__":
    entry.run(main)
