"""Lookahead inter-task affinity (Fifty et al., "Efficiently Identifying Task Groupings for
Multi-Task Learning", NeurIPS 2021): how a step on task i alone changes the loss of task j.

    Z[i, j] = 1 - L_j(theta_s - lr * grad_s L_i, theta_j) / L_j(theta_s, theta_j)

Positive: a step on i lowers j's loss (i helps j); negative: it raises it (negative transfer).
Averaged over the steps of a run, the matrix shows which tasks to train together before a
grouping costs a full run; `suggest_groups` picks the partition with the most affinity inside
the groups (the paper's network selection, restricted to partitions).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtl import workdir_files
from mtl.weighting import base


def lookahead_affinity(objective: base.TaskObjective, lr: float) -> jax.Array:
    """`Z` [T, T] on one batch: per-task shared gradients from one vmap over a vjp, then T
    lookahead forward passes (vectorised) with the heads held fixed."""
    shared_grads, _, update = base.per_task_shared_grads(objective)
    before = update.losses

    def losses_after(grad_i):
        shared = jax.tree.map(lambda p, g: p - lr * g.astype(p.dtype), objective.shared, grad_i)
        z, _ = objective.representation(shared)
        losses, _ = objective.task_losses(objective.task_specific, z)
        return losses

    after = jax.vmap(losses_after)(shared_grads)  # [i, j]
    return 1.0 - after / jnp.maximum(before[None, :], 1e-12)


def _partitions(items: list[int], groups: int) -> Iterator[list[list[int]]]:
    """All partitions of `items` into exactly `groups` non-empty groups."""
    if groups == 1:
        yield [items]
        return
    if len(items) == groups:
        yield [[i] for i in items]
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest, groups - 1):  # `first` alone
        yield [[first], *part]
    for part in _partitions(rest, groups):  # `first` joins one of the groups
        for g in range(len(part)):
            yield [*part[:g], [first, *part[g]], *part[g + 1 :]]


def group_score(affinity: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """Mean over tasks j of the mean affinity onto j from the other members of j's group
    (0 for a task alone): TAG's "total inter-task affinity" of a grouping."""
    total = 0.0
    for group in groups:
        for j in group:
            others = [i for i in group if i != j]
            if others:
                total += float(np.mean([affinity[i, j] for i in others]))
    return total / affinity.shape[0]


def suggest_groups(affinity: np.ndarray, num_groups: int) -> tuple[list[list[int]], float]:
    """The partition of the tasks into `num_groups` groups with the highest `group_score`.

    Exhaustive (Bell numbers: 4,140 partitions of 8 tasks in all), which is exact for the task
    counts of multi-task benchmarks; the paper uses a branch-and-bound for larger T.
    """
    num = affinity.shape[0]
    if not 1 <= num_groups <= num:
        raise ValueError(f"num_groups must be in [1, {num}], got {num_groups}.")
    best, best_score = None, -np.inf
    for part in _partitions(list(range(num)), num_groups):
        score = group_score(affinity, part)
        if score > best_score:
            best, best_score = part, score
    return [sorted(g) for g in best], best_score


def save_heatmap(affinity: np.ndarray, names: Sequence[str], path: str, title: str = "") -> None:
    """A PNG heatmap: row i (the task stepped on), column j (the task whose loss changes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num = len(names)
    # The diagonal (a step on a task helps that task) dwarfs the transfer between tasks: scale
    # the colours to the off-diagonal entries and let the diagonal saturate.
    off = affinity[~np.eye(num, dtype=bool)] if num > 1 else affinity.ravel()
    limit = float(np.max(np.abs(off))) or 1.0
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * num, 0.8 + 0.7 * num))
    image = ax.imshow(affinity, cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(num), names, rotation=45, ha="right")
    ax.set_yticks(range(num), names)
    ax.set_xlabel("task j (loss measured)")
    ax.set_ylabel("task i (step taken)")
    for i, j in itertools.product(range(num), range(num)):
        ax.text(j, i, f"{1e3 * affinity[i, j]:.1f}", ha="center", va="center", fontsize=7)
    ax.set_title(title or "lookahead affinity Z[i, j] (x 1e-3; colours: off-diagonal range)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    affinity: np.ndarray, names: Sequence[str], directory: str, max_groups: int = 3
) -> dict:
    """`affinity.npy`, `affinity.json` (matrix, names, suggested groups) and `affinity.png`."""
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "affinity.npy"), affinity)
    groups = {}
    for k in range(2, min(max_groups, len(names)) + 1):
        part, score = suggest_groups(affinity, k)
        groups[str(k)] = {"groups": [[names[i] for i in g] for g in part], "score": score}
    report = {"tasks": list(names), "affinity": affinity.tolist(), "suggested_groups": groups}
    workdir_files.write_json(os.path.join(directory, "affinity.json"), report)
    save_heatmap(affinity, names, os.path.join(directory, "affinity.png"))
    return report
