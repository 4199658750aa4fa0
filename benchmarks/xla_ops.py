"""Where a jitted step spends its time on XLA CPU: busy time per HLO op and per op kind.

The benchmarks' `--profile` flag calls `report`: it traces a few steps with `jax.profiler`
(a Perfetto JSON trace), keeps the events of the thunks XLA executed (those that name an
`hlo_op`), and sums their durations per op and per kind (the op name without its numeric
suffix, e.g. `ynn_fusion` for the library matmuls, `pad_slice_fusion` for shifted slices).
Times are busy times: XLA runs independent thunks concurrently on the CPU's threads, so an
op slowed by a neighbour shows as slower, and the total can exceed the wall time. Container
thunks (`while`, `call`, `conditional`) are left out, since their bodies are counted op by op.
Match an op name to its HLO with `XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`.

Given the compiled program's HLO text (`jax.jit(f).lower(...).compile().as_text()`), `report`
also lists the matmuls, ops that run the same dot grouped in one row, with their shapes,
contracted dimensions, FLOPs and GFLOP/s, in the step and for the same dot jitted alone: a
shape the library is slow at shows slow in both, a slowdown that comes from the step around
it (concurrent ops, memory) only in the step.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

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


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_DOT = re.compile(r"\bdot\(%([\w.\-]+), %([\w.\-]+)\)(.*)")
_FUSION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .* fusion\(.*calls=%([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


class Dot(NamedTuple):
    """One dot of the optimized HLO: operand shapes and `lax.dot_general` dimension numbers."""

    lhs: tuple[int, ...]
    rhs: tuple[int, ...]
    out: tuple[int, ...]
    dimension_numbers: tuple  # ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))

    @property
    def flops(self) -> float:
        """2 * |out| * K: one multiply and one add per output element and contracted element."""
        k = 1
        for axis in self.dimension_numbers[0][0]:
            k *= self.lhs[axis]
        return 2.0 * float(np.prod(self.out)) * k

    def __str__(self) -> str:
        return f"{list(self.lhs)} x {list(self.rhs)} -> {list(self.out)}"


def _dimension(attributes: str, name: str) -> tuple[int, ...]:
    found = re.search(name + r"=\{([\d,]*)\}", attributes)
    return tuple(_dims(found.group(1))) if found else ()


def dots_per_op(hlo_text: str) -> dict[str, list[Dot]]:
    """The dots of every op that runs one or more: unfused dots and fusions that contain dots.

    Reads the optimized HLO text (`compiled.as_text()`); a fusion's dots are those of the
    computation it calls.
    """
    shapes: dict[str, list[int]] = {}
    dots: dict[str, list[tuple[str, str, str, str]]] = collections.defaultdict(list)  # raw
    fusions: dict[str, str] = {}
    home: dict[str, str] = {}  # dot -> the computation it is in
    computation = ""
    for line in hlo_text.splitlines():
        if not line.startswith(" ") and (m := _COMPUTATION.match(line)):
            computation = m.group(1)
            continue
        if not (m := _INSTRUCTION.match(line)):
            continue
        name, _, dims = m.groups()
        shapes[name] = _dims(dims)
        if d := _DOT.search(line):
            dots[computation].append((name, *d.groups()))
            dots[name].append((name, *d.groups()))
            home[name] = computation
        if f := _FUSION.match(line):
            fusions[f.group(1)] = f.group(2)
    fused = set(fusions.values())
    unfused_dots = [name for name, computation in home.items() if computation not in fused]
    out = {}
    for op in list(fusions) + unfused_dots:
        found = [
            Dot(
                tuple(shapes[lhs]), tuple(shapes[rhs]), tuple(shapes[name]),
                (
                    (_dimension(attrs, "lhs_contracting_dims"),
                     _dimension(attrs, "rhs_contracting_dims")),
                    (_dimension(attrs, "lhs_batch_dims"), _dimension(attrs, "rhs_batch_dims")),
                ),
            )
            for name, lhs, rhs, attrs in dots.get(fusions.get(op, op), [])
        ]  # fmt: skip
        if found:
            out[op] = found
    return out


def seconds_alone(dot: Dot, repeats: int = 10) -> float:
    """Best-of-`repeats` seconds of the same dot (float32) jitted on its own: the library's
    speed on that shape, a yardstick for the same op inside a step (best-of, because load from
    elsewhere only ever slows a run down)."""
    lhs = jax.numpy.ones(dot.lhs, jax.numpy.float32)
    rhs = jax.numpy.ones(dot.rhs, jax.numpy.float32)
    run = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dot.dimension_numbers))
    run(lhs, rhs).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(lhs, rhs).block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times)


def report(
    run_steps: Callable[[int], object], steps: int, top: int = 12, hlo_text: str | None = None
) -> str:
    """Markdown: the costliest op kinds and ops while `run_steps(steps)` runs `steps` steps;
    with the compiled `hlo_text`, also the costliest matmul ops and their GFLOP/s."""
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
    if hlo_text is not None:
        per_op = dots_per_op(hlo_text)
        timed = {op: ms for op, ms in busy.items() if op in per_op}
        seconds = sum(timed.values()) / 1e3
        rate = sum(d.flops for op in timed for d in per_op[op]) / max(seconds, 1e-12) / 1e9
        lines += [
            f"Matmul ops: {1e3 * seconds:.1f} ms per step at {rate:.0f} GFLOP/s overall. Ops "
            "running the same dots (shapes and contracted dimensions) are one row; 'alone': "
            "that dot jitted by itself (for ops with one dot).",
            "",
            "| ops | ms / step | GFLOP | GFLOP/s in the step | GFLOP/s alone | dot |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        groups: dict[tuple[Dot, ...], list[str]] = collections.defaultdict(list)
        for op in timed:
            groups[tuple(per_op[op])].append(op)
        by_time = sorted(groups.items(), key=lambda g: -sum(timed[op] for op in g[1]))
        for found, ops in by_time[:top]:
            ms = sum(timed[op] for op in ops)
            gflop = len(ops) * sum(d.flops for d in found) / 1e9
            alone = f"{gflop / len(ops) / seconds_alone(found[0]):.0f}" if len(found) == 1 else "-"
            dots = "; ".join(f"{d}, contracting {d.dimension_numbers[0]}" for d in found)
            label = ops[0] if len(ops) == 1 else f"{len(ops)} ({ops[0]}, ...)"
            rate = gflop / ms * 1e3
            lines.append(f"| {label} | {ms:.1f} | {gflop:.2f} | {rate:.0f} | {alone} | {dots} |")
        lines.append("")
    return "\n".join(lines)
