"""The benchmarks' op profile: it must find the ops XLA ran, per step, from a real trace."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import xla_ops


def test_op_profile_finds_the_ops_of_a_jitted_step():
    step = jax.jit(lambda a: jnp.tanh(a @ a).sum())
    a = jnp.ones((512, 512))
    step(a).block_until_ready()  # compile outside the trace

    busy = xla_ops.trace_ops(lambda n: [step(a).block_until_ready() for _ in range(n)], 4)

    assert busy and all(ms > 0 for ms in busy.values())
    kinds = {xla_ops.kind(op) for op in busy}
    assert kinds & {"dot", "ynn_fusion", "xnn_fusion"}, kinds  # the matmul ran and was seen
    assert not kinds & set(xla_ops.CONTAINERS)
    report = xla_ops.report(lambda n: [step(a).block_until_ready() for _ in range(n)], 4)
    assert "| op kind | ms / step | share |" in report and "| op | ms / step | share |" in report


def test_kind_drops_only_the_numeric_suffix():
    assert xla_ops.kind("ynn_fusion.70") == "ynn_fusion"
    assert xla_ops.kind("wrapped_reduce-window.33") == "wrapped_reduce-window"
    assert xla_ops.kind("copy") == "copy"


def test_matmuls_are_found_fused_and_batched_with_their_flops_in_the_compiled_hlo():
    def step(a, b, q, k):
        return jnp.tanh(a @ b).sum() + jnp.einsum("bqd,bkd->bqk", q, k).sum()

    args = (jnp.ones((64, 32)), jnp.ones((32, 16)), jnp.ones((3, 8, 4)), jnp.ones((3, 5, 4)))
    compiled = jax.jit(step).lower(*args).compile()

    per_op = xla_ops.dots_per_op(compiled.as_text())

    flops = {op: sum(d.flops for d in dots) for op, dots in per_op.items()}
    assert sorted(flops.values()) == sorted([2.0 * 64 * 16 * 32, 2.0 * 3 * 8 * 5 * 4]), per_op
    described = " ".join(str(d) for dots in per_op.values() for d in dots)
    assert "[64, 32] x [32, 16] -> [64, 16]" in described, described
    report = xla_ops.report(
        lambda n: [compiled(*args).block_until_ready() for _ in range(n)],
        4,
        hlo_text=compiled.as_text(),
    )
    header = "| ops | ms / step | GFLOP | GFLOP/s in the step | GFLOP/s alone | dot |"
    assert header in report, report
    assert "[64, 32] x [32, 16] -> [64, 16], contracting ((1,), (0,))" in report, report
    (dot,) = per_op[next(op for op, f in flops.items() if f == 2.0 * 64 * 16 * 32)]
    assert dot.dimension_numbers == (((1,), (0,)), ((), ())) and xla_ops.seconds_alone(dot) > 0


def test_torch_profile_names_the_peer_ops_per_step():
    import torch

    from benchmarks import torch_ops

    a = torch.ones(256, 256)
    report = torch_ops.report(lambda n: [torch.tanh(a @ a) for _ in range(n)], 4)
    assert "| op | ms / step | calls / step | share |" in report
    assert "| aten::mm | " in report and "| aten::tanh | " in report, report
    mm_row = next(line for line in report.splitlines() if line.startswith("| aten::mm |"))
    assert mm_row.split(" | ")[2] == "1"  # 4 calls over 4 steps
