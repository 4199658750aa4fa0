"""Where a jitted step spends its time on XLA CPU: busy time per HLO op and per op kind.

The benchmarks' `--profile` flag calls `report`: it traces a few steps with `jax.profiler`
(a Perfetto JSON trace), keeps the events of the thunks XLA executed (those that name an
`hlo_op`), and sums their durations per op and per kind (the op name without its numeric
suffix, e.g. `ynn_fusion` for the library matmuls, `pad_slice_fusion` for shifted slices).
Times are busy times: XLA runs independent thunks concurrently on the CPU's threads, so an
op slowed by a neighbour shows as slower, and the total can exceed the wall time. Container
thunks (`while`, `call`, `conditional`) are left out, since their bodies are counted op by op.
Match an op name to its HLO with `XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable

import jax

CONTAINERS = ("while", "call", "conditional")


def kind(op: str) -> str:
    """`ynn_fusion.70` -> `ynn_fusion`."""
    return re.sub(r"\.\d+$", "", op)


def trace_ops(run_steps: Callable[[int], object], steps: int) -> dict[str, float]:
    """Busy milliseconds per step of every HLO op while `run_steps(steps)` runs."""
    with tempfile.TemporaryDirectory() as workdir:
        with jax.profiler.trace(workdir, create_perfetto_trace=True):
            run_steps(steps)
        (path,) = glob.glob(os.path.join(workdir, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    busy = collections.Counter()
    for event in events:
        op = event.get("args", {}).get("hlo_op")
        if event.get("ph") == "X" and op and kind(op) not in CONTAINERS:
            busy[op] += event["dur"] / 1e3 / steps  # microseconds -> ms per step
    return dict(busy)


def report(run_steps: Callable[[int], object], steps: int, top: int = 12) -> str:
    """Markdown: the costliest op kinds and ops while `run_steps(steps)` runs `steps` steps."""
    busy = trace_ops(run_steps, steps)
    total = sum(busy.values())
    kinds = collections.Counter()
    for op, ms in busy.items():
        kinds[kind(op)] += ms
    lines = [f"XLA busy time: {total:.1f} ms per step over {len(busy)} ops.", ""]
    for title, counts in (("op kind", kinds), ("op", collections.Counter(busy))):
        lines += [f"| {title} | ms / step | share |", "| --- | --- | --- |"]
        lines += [
            f"| {name} | {ms:.1f} | {100 * ms / total:.0f}% |"
            for name, ms in counts.most_common(top)
        ]
        lines.append("")
    return "\n".join(lines)
