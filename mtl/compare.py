"""Comparing a multi-task run with single-task baselines: Delta-m.

Delta-m (Maninis et al. 2019; LibMTL's `count_improvement`) is the mean over tasks and metrics
of the relative change against the single-task baseline, in percent, signed so that higher is
better:

    Delta-m = 100 / K * sum_k (-1)^{l_k} (M_mtl,k - M_stl,k) / M_stl,k

with l_k = 1 for metrics where lower is better (`mtl.tasks.LOWER_IS_BETTER`).
"""

from __future__ import annotations

from collections.abc import Mapping

from mtl.tasks import LOWER_IS_BETTER

Results = Mapping[str, Mapping[str, float]]  # task -> metric -> value


def delta_m(multi_task: Results, single_task: Results) -> float:
    """Delta-m in percent over every (task, metric) present in `single_task`."""
    changes = []
    for task, baseline in single_task.items():
        for metric, reference in baseline.items():
            if metric == "count":
                continue
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            changes.append(sign * (multi_task[task][metric] - reference) / reference)
    if not changes:
        raise ValueError("delta_m needs at least one baseline metric.")
    return 100.0 * sum(changes) / len(changes)
