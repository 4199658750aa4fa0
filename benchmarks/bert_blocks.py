"""Where the fine-tuning step's gap to PyTorch lies: one encoder layer, block by block.

    python -m benchmarks.bert_blocks                  # MiniLM layer 0, batch 32, 128 tokens
    python -m benchmarks.bert_blocks --blocks=attention --rounds=9
    python -m benchmarks.bert_blocks --blocks=feed_forward --profile   # our XLA ops

`benchmarks/finetune_step.py` times the whole step; this times its repeated part, forward and
backward (gradients of the input and of the block's weights), for each block of encoder layer 0
of all-MiniLM-L6-v2, ours against the same module of transformers' PyTorch `BertModel`, both
from the same weights and on the same hidden states:

- `attention`: query/key/value projections, masked softmax attention, output projection,
  residual, layer norm (ours `Attention`, theirs `BertAttention`);
- `feed_forward`: dense 384 -> 1536, GELU, dense 1536 -> 384, residual, layer norm (ours
  `Layer.feed_forward`, theirs `BertIntermediate` + `BertOutput`);
- `layer`: both in sequence (ours `Layer`, theirs `BertLayer`).

Dropout is off on both sides (the full step's benchmark covers it), so the outputs must agree:
the table prints the largest difference. PyTorch's attention is the implementation
transformers picks for `BertModel` (`sdpa`) with the mask the whole model builds, run on
`sdpa`'s math backend (batched matmuls): the one it takes in the fine-tuning step, where
dropout is on. Without dropout PyTorch would pick its fused CPU attention kernel instead;
`--torch_fused_attention` times that. The timing alternates between the two sides round by
round and reports medians.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from absl import flags

from mtl import allocator, entry

BLOCKS = ("attention", "feed_forward", "layer")


def _define_flags() -> dict:
    """The command line's flags. Defined only when run as a script: absl flags are global,
    and the test suite imports this module beside scripts that define `steps` and `rounds`."""
    return {
        "batch_size": flags.DEFINE_integer("batch_size", 32, "Sentences per step."),
        "seq_len": flags.DEFINE_integer("seq_len", 128, "Tokens per sentence (padded)."),
        "rounds": flags.DEFINE_integer("rounds", 5, "Timed rounds (each side once per round)."),
        "steps": flags.DEFINE_integer("steps", 5, "Forward-backward passes per side per round."),
        "blocks": flags.DEFINE_list(
            "blocks", list(BLOCKS), f"Blocks to time, of {', '.join(BLOCKS)}."
        ),
        "torch_threads": flags.DEFINE_integer(
            "torch_threads", 0, "PyTorch threads (0: all CPU cores)."
        ),
        "profile": flags.DEFINE_bool(
            "profile", False, "Then print where our blocks spend their time."
        ),
        "torch_fused_attention": flags.DEFINE_bool(
            "torch_fused_attention",
            False,
            "Let PyTorch pick its fused attention kernel (no dropout).",
        ),
    }


def _inputs(batch: int, seq: int, hidden: int, seed: int = 0):
    """Hidden states, a padding mask (lengths in [seq / 2, seq]) and an output cotangent."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    mask = np.arange(seq)[None, :] < lengths[:, None]
    states = rng.standard_normal((batch, seq, hidden)).astype(np.float32)
    cotangent = rng.standard_normal((batch, seq, hidden)).astype(np.float32)
    return states, mask, cotangent


def ours(layer, block: str, states, mask, cotangent) -> tuple[Callable[[int], None], object, str]:
    """`(run, output, hlo_text)`: `run(n)` takes n jitted forward-backward passes of the block
    of our encoder `layer`; `hlo_text` is the compiled pass's HLO."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    module = layer.attention if block == "attention" else layer
    graph, params, rest = nnx.split(module, nnx.Param, ...)
    key_mask, cotangent = jnp.asarray(mask), jnp.asarray(cotangent)

    def forward(params, x):
        m = nnx.merge(graph, params, rest)
        if block == "feed_forward":
            return m.feed_forward(x, train=True)
        return m(x, key_mask, train=True)

    def loss(params, x):
        return jnp.sum(forward(params, x) * cotangent)

    x = jnp.asarray(states)
    step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()

    def run(n: int) -> None:
        for _ in range(n):
            grads = step(params, x)
        jax.block_until_ready(grads)

    return run, jax.jit(forward)(params, x), step.as_text()


def torch_layer(hf_dir: str, mask):
    """transformers' encoder layer 0 (dropout off, train mode) and the attention mask
    `BertModel` builds for `mask` and hands its layers (captured with a pre-hook)."""
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(
        hf_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, add_pooling_layer=False
    ).train()
    layer = model.encoder.layer[0]
    seen = {}
    hook = layer.register_forward_pre_hook(
        lambda _, args, kwargs: seen.update(kwargs, args=args), with_kwargs=True
    )
    ids = torch.ones(mask.shape, dtype=torch.long)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.tensor(mask, dtype=torch.long))
    hook.remove()
    return layer, seen["attention_mask"] if "attention_mask" in seen else seen["args"][1]


def peer(
    layer, attention_mask, block: str, states, cotangent, fused_attention: bool = False
) -> tuple[Callable[[int], None], object]:
    """`(run, output)`: the same for the block of transformers' encoder `layer`."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = contextlib.nullcontext if fused_attention else lambda: sdpa_kernel(SDPBackend.MATH)

    if block == "attention":
        modules = [layer.attention]
        forward = lambda x: layer.attention(x, attention_mask=attention_mask)[0]  # noqa: E731
    elif block == "feed_forward":
        modules = [layer.intermediate, layer.output]
        forward = lambda x: layer.output(layer.intermediate(x), x)  # noqa: E731
    else:
        modules = [layer]
        forward = lambda x: layer(x, attention_mask=attention_mask)  # noqa: E731

    def first(output):  # BertLayer returns a tensor in transformers 5, a tuple before
        return output[0] if isinstance(output, tuple) else output

    x = torch.tensor(states, requires_grad=True)
    weights = [p for m in modules for p in m.parameters()]
    target = torch.tensor(cotangent)

    def run(n: int) -> None:
        with backend():
            for _ in range(n):
                torch.autograd.grad((first(forward(x)) * target).sum(), [x, *weights])

    with torch.no_grad(), backend():
        output = first(forward(x)).numpy()
    return run, output


def compare(
    hf_dir: str,
    blocks,
    batch: int,
    seq: int,
    rounds: int,
    steps: int,
    fused: bool = False,
    profile: bool = False,
) -> list[dict[str, float | str]]:
    """Per block: median ms per forward-backward pass on each side, the output difference
    and, with `profile`, our pass's `benchmarks.xla_ops` report."""
    import numpy as np

    from mtl.convert import load_bert

    for block in blocks:
        if block not in BLOCKS:
            raise ValueError(f"Unknown block {block!r}: pick from {', '.join(BLOCKS)}.")
    states, mask, cotangent = _inputs(batch, seq, hidden=384)
    our_layer = load_bert(hf_dir, dropout=0.0, attention_dropout=0.0).layers[0]
    their_layer, attention_mask = torch_layer(hf_dir, mask)
    rows = []
    for block in blocks:
        run_ours, out_ours, hlo_text = ours(our_layer, block, states, mask, cotangent)
        run_peer, out_peer = peer(their_layer, attention_mask, block, states, cotangent, fused)
        real = mask[..., None]  # padded positions are outputs nobody reads
        difference = float(np.max(np.abs(np.asarray(out_ours) - out_peer) * real))
        sides = {"ours": run_ours, "pytorch": run_peer}
        for run in sides.values():  # compile / warm up
            run(1)
        times = {name: [] for name in sides}
        for _ in range(rounds):
            for name, run in sides.items():
                start = time.perf_counter()
                run(steps)
                times[name].append((time.perf_counter() - start) / steps * 1e3)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        rows.append(dict(block=block, **medians, difference=difference))
        if profile:
            from benchmarks import xla_ops

            rows[-1]["profile"] = xla_ops.report(run_ours, steps, hlo_text=hlo_text)
    return rows


def table(rows) -> str:
    lines = [
        "| block | ours (ms) | PyTorch (ms) | ours / PyTorch | max output difference |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['block']} | {r['ours']:.1f} | {r['pytorch']:.1f} | "
            f"{r['ours'] / r['pytorch']:.2f} | {r['difference']:.1e} |"
        )
    return "\n".join(lines)


def main(argv, options: dict) -> None:
    del argv
    import jax
    import torch

    from mtl.convert import package_dir

    value = {name: holder.value for name, holder in options.items()}
    torch.set_num_threads(value["torch_threads"] or os.cpu_count())
    rows = compare(
        package_dir(),
        value["blocks"],
        value["batch_size"],
        value["seq_len"],
        value["rounds"],
        value["steps"],
        value["torch_fused_attention"],
        value["profile"],
    )
    print(
        f"all-MiniLM-L6-v2 layer 0, forward + backward, batch {value['batch_size']} x "
        f"{value['seq_len']} tokens, no dropout; medians of {value['rounds']} rounds x "
        f"{value['steps']} passes; {os.cpu_count()} CPU cores; jax {jax.__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), PyTorch attention: "
        f"{'its choice' if value['torch_fused_attention'] else 'sdpa math backend'}; "
        f"malloc: {allocator.current_allocator()}"
    )
    print(table(rows))
    for row in rows:
        if "profile" in row:
            print(f"\nours, {row['block']}:\n{row['profile']}")


if __name__ == "__main__":
    _OPTIONS = _define_flags()
    entry.run(lambda argv: main(argv, _OPTIONS))
