"""Peak memory of one fine-tuning step of a BERT-base-sized encoder (random weights), ours in
float32, bfloat16 and bfloat16 with remat, against PyTorch's BertModel in float32, under
autocast, and under autocast with gradient checkpointing.

    .venv/bin/python -m benchmarks.memory                       # BERT-base, batch 8 x 128
    .venv/bin/python -m benchmarks.memory --batch_size=32 --seq_len=512

Every configuration runs in a fresh process (so one's peak is not another's): it builds the
encoder, a linear head and AdamW, takes two full training steps, and reports its peak
resident memory (`ru_maxrss`), the resident memory before the first step (weights, optimizer
state, runtime), and their difference: what the step itself needs (activations, gradients,
workspace). For ours it also reports XLA's own account of the compiled step's temporary
buffers (`memory_analysis`), which is what an accelerator would have to hold beside the
arguments. Both sides take the same batch with padding and the same dropout (0.1).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import flags

from mtl import entry

_BATCH = flags.DEFINE_integer("batch_size", 8, "Sentences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per sentence (padded).")
_LAYERS = flags.DEFINE_integer("layers", 12, "Encoder layers (BERT-base: 12).")
_HIDDEN = flags.DEFINE_integer("hidden", 768, "Hidden size (BERT-base: 768).")
_HEADS = flags.DEFINE_integer("heads", 12, "Attention heads (BERT-base: 12).")
_CHILD = flags.DEFINE_string("child", "", "Internal: run one configuration and print JSON.")
_README = flags.DEFINE_string("readme", "", "Page to write the table into (between markers).")
BEGIN, END = "<!-- memory-results:begin -->", "<!-- memory-results:end -->"

CONFIGS = (
    ("ours", "float32", False),
    ("ours", "bfloat16", False),
    ("ours", "bfloat16", True),
    ("PyTorch", "float32", False),
    ("PyTorch", "bfloat16", False),
    ("PyTorch", "bfloat16", True),
)
VOCAB, CLASSES = 30522, 2


def _rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _batch():
    import numpy as np

    rng = np.random.default_rng(0)
    batch, seq = _BATCH.value, _SEQ.value
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(1000, VOCAB, size=(batch, seq)) * mask).astype(np.int32)
    labels = rng.integers(0, CLASSES, size=batch).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids}, labels


def ours(dtype: str, remat: bool) -> dict:
    import jax
    import numpy as np
    import optax

    from mtl.models import build_model
    from mtl.runs.supervised_step import make_steps
    from mtl.tasks import tasks_from_config
    from mtl.weighting import get_weighting

    inputs, labels = _batch()
    tasks = tasks_from_config({"t": dict(head="classification", num_outputs=CLASSES)})
    bert = dict(hidden_size=_HIDDEN.value, num_layers=_LAYERS.value, num_heads=_HEADS.value,
                intermediate_size=4 * _HIDDEN.value, remat=remat)  # fmt: skip
    shape = {k: v.shape[1:] for k, v in inputs.items()}
    model = build_model({"trunk": "bert", "bert": bert}, tasks, shape, seed=0, precision=dtype)
    steps = make_steps(model, tasks, optax.adamw(1e-4), get_weighting("equal"), seed=0)
    batch = {
        "inputs": jax.device_put(inputs),
        "labels": {"t": jax.device_put(labels)},
        "masks": {"t": jax.device_put(np.ones(len(labels), bool))},
    }
    del model
    state = jax.jit(steps.init)()
    compiled = jax.jit(steps.train_step, donate_argnums=0).lower(state, batch).compile()
    analysis = compiled.memory_analysis()
    jax.block_until_ready(state)
    before = _current_rss_mb()
    start = time.perf_counter()
    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    return {
        "before_mb": before,
        "peak_mb": _rss_mb(),
        "step_s": (time.perf_counter() - start) / 2,
        "xla_temp_mb": analysis.temp_size_in_bytes / 2**20 if analysis else None,
    }


def peer(dtype: str, checkpointing: bool) -> dict:
    import torch
    from transformers import BertConfig, BertModel

    from benchmarks import precision

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=_HIDDEN.value,
        num_hidden_layers=_LAYERS.value,
        num_attention_heads=_HEADS.value,
        intermediate_size=4 * _HIDDEN.value,
    )
    model = BertModel(config, add_pooling_layer=False).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    head = torch.nn.Linear(_HIDDEN.value, CLASSES)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    inputs, labels = _batch()
    batch = {k: torch.tensor(v, dtype=torch.long) for k, v in inputs.items()}
    target = torch.tensor(labels, dtype=torch.long)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    before = _current_rss_mb()
    start = time.perf_counter()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(dtype):
            hidden = model(**batch).last_hidden_state
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            loss = torch.nn.functional.cross_entropy(head(pooled).float(), target)
        loss.backward()
        optimizer.step()
    return {
        "before_mb": before,
        "peak_mb": _rss_mb(),
        "step_s": (time.perf_counter() - start) / 2,
        "xla_temp_mb": None,
    }


def child(spec: str) -> None:
    side, dtype, saving = spec.split(":")
    run = ours if side == "ours" else peer
    print("RESULT " + json.dumps(run(dtype, saving == "1")))


def main(argv):
    del argv
    if _CHILD.value:
        child(_CHILD.value)
        return
    sizes = [f"--{f.name}={f.value}" for f in (_BATCH, _SEQ, _LAYERS, _HIDDEN, _HEADS)]
    rows = []
    for side, dtype, saving in CONFIGS:
        spec = f"{side}:{dtype}:{int(saving)}"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", f"--child={spec}", *sizes],
            capture_output=True,
            text=True,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            raise SystemExit(f"{spec} failed:\n{done.stderr[-3000:]}")
        rows.append((side, dtype, saving, json.loads(lines[-1][len("RESULT ") :])))
    lines = [
        f"One fine-tuning step (AdamW, linear head, dropout 0.1) of a BERT-sized encoder: "
        f"{_LAYERS.value} layers x {_HIDDEN.value} hidden, {_HEADS.value} heads, random weights; "
        f"batch {_BATCH.value} x {_SEQ.value} tokens; each row a fresh process on the CPU.",
        "",
        "| side | precision | remat / checkpointing | peak RSS (MiB) | before the step (MiB) "
        "| step's own (MiB) | XLA temp (MiB) | s / step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for side, dtype, saving, r in rows:
        temp = f"{r['xla_temp_mb']:.0f}" if r["xla_temp_mb"] is not None else "-"
        lines.append(
            f"| {side} | {dtype} | {'yes' if saving else 'no'} | {r['peak_mb']:.0f} | "
            f"{r['before_mb']:.0f} | {r['peak_mb'] - r['before_mb']:.0f} | {temp} | "
            f"{r['step_s']:.2f} |"
        )
    print("\n".join(lines))
    if _README.value:
        from scripts.readme import write_between

        write_between(_README.value, BEGIN, END, "\n".join(lines))


if __name__ == "__main__":
    entry.run(main)
