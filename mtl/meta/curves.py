"""Evaluation on held-out episodes: mean and 95% confidence interval after each inner step.

As in MAML's and ProtoNets' papers, a score is the mean over episodes (600 by default) with
the half-width 1.96 * std / sqrt(episodes) of its 95% confidence interval. Gradient-based
learners are scored before adaptation and after every inner step, which gives an adaptation
curve; `plot_curves` draws curves of several settings or models into one PNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np


def summarize(curves: np.ndarray) -> dict[str, list[float]]:
    """Per-step mean and 95% CI half-width of per-episode curves [episodes, steps + 1]."""
    curves = np.asarray(curves, np.float64)
    n = curves.shape[0]
    std = curves.std(axis=0, ddof=1) if n > 1 else np.zeros(curves.shape[1])
    return {
        "mean": curves.mean(axis=0).tolist(),
        "ci95": (1.96 * std / math.sqrt(n)).tolist(),
        "episodes": n,
    }


def episode_curves(
    curve_fn: Callable, sample: Callable[[int], Mapping], episodes: int, batch: int
) -> np.ndarray:
    """Per-episode curves [episodes, steps + 1] from `curve_fn(batch_of_episodes)`.

    `sample(i)` gives the i-th meta-batch of `batch` episodes; the last one is cut to size.
    """
    parts, done, index = [], 0, 0
    while done < episodes:
        out = np.asarray(curve_fn(sample(index)))
        parts.append(out[: episodes - done])
        done += len(parts[-1])
        index += 1
    return np.concatenate(parts)


def setting_name(ways: int, shots: int, kind: str) -> str:
    """`5way_1shot` for classification, `10shot` for regression."""
    return f"{shots}shot" if kind == "regression" else f"{ways}way_{shots}shot"


def plot_curves(
    curves: Mapping[str, Mapping[str, list[float]]], path: str, *, ylabel: str, title: str
) -> None:
    """Lines of mean +- CI against inner steps, one per entry of `curves`, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, c in curves.items():
        mean, ci = np.asarray(c["mean"]), np.asarray(c["ci95"])
        steps = np.arange(len(mean))
        marker = "o" if len(mean) > 1 else "s"
        ax.plot(steps, mean, marker=marker, markersize=3, label=label)
        ax.fill_between(steps, mean - ci, mean + ci, alpha=0.2)
    ax.set_xlabel("inner gradient steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
