"""Where a PyTorch peer's step spends its time: self CPU time per ATen op, per step.

The benchmarks' `--profile` prints this next to `xla_ops.report` for our step, so the two
sides' matmuls, random numbers and elementwise work can be compared op class by op class.
Self time is the op's own time, without the ops it calls; like XLA's busy time, it adds up
over threads only where PyTorch runs ops on several threads itself (it usually runs one op at
a time and parallelises inside it).
"""

from __future__ import annotations

from collections.abc import Callable


def report(run_steps: Callable[[int], object], steps: int, top: int = 12) -> str:
    """Markdown: the costliest ATen ops (self CPU ms per step) while `run_steps(steps)` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as trace:
        run_steps(steps)
    events = [e for e in trace.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    lines = [
        f"PyTorch self CPU time: {total:.1f} ms per step over {len(events)} op names.",
        "",
        "| op | ms / step | calls / step | share |",
        "| --- | --- | --- | --- |",
    ]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        ms = e.self_cpu_time_total / 1e3 / steps
        lines.append(f"| {e.key} | {ms:.1f} | {e.count / steps:g} | {100 * ms / total:.0f}% |")
    lines.append("")
    return "\n".join(lines)
