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
