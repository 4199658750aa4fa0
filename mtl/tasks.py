"""What a task is: its head, loss, metrics and the label field it reads.

Tasks are declared in the config, one block per task keyed by its name:

    config.tasks.Greek = dict(head="classification", num_outputs=24, label="Greek")

`loss` and `metrics` default to the head's (see `mtl.models.heads.HEAD_DEFAULTS`).

Labels can be missing: every batch carries a boolean mask per task, and losses and metrics are
means over the examples whose mask is set. A missing label never counts as a zero. Losses and
metrics are per-example functions `(outputs, labels) -> [batch]`, so masking, sharding and
accumulation over an evaluation set are the same for all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl.errors import ConfigError, DataError, unknown_name
from mtl.models import causal_lm
from mtl.models.heads import HEAD_DEFAULTS, HEADS

PerExample = Callable[[jax.Array, jax.Array], jax.Array]


def _as_vectors(outputs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Regression outputs [B, D] and labels [B] or [B, D], both as [B, D] floats."""
    labels = labels.astype(outputs.dtype)
    return outputs, labels.reshape(outputs.shape)


def _softmax_cross_entropy(logits, labels):
    # Masked-out rows carry label -1; clip so the gather stays in range (their loss is masked).
    labels = jnp.clip(labels, 0, logits.shape[-1] - 1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _sigmoid_cross_entropy(logits, labels):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)), -1)


def _squared_error(outputs, labels):
    outputs, labels = _as_vectors(outputs, labels)
    return jnp.mean(jnp.square(outputs - labels), -1)


def _absolute_error(outputs, labels):
    outputs, labels = _as_vectors(outputs, labels)
    return jnp.mean(jnp.abs(outputs - labels), -1)


LOSSES: dict[str, PerExample] = {
    "softmax_cross_entropy": _softmax_cross_entropy,
    "sigmoid_cross_entropy": _sigmoid_cross_entropy,
    "mse": _squared_error,
    "l1": _absolute_error,
    # Logits [B, L, vocab] of the trunk's LM head against the token ids (-1 at padding).
    "causal_lm": causal_lm.sequence_nll,
}

METRICS: dict[str, PerExample] = {
    "accuracy": lambda logits, labels: (jnp.argmax(logits, -1) == labels).astype(jnp.float32),
    "label_accuracy": lambda logits, labels: jnp.mean(
        ((logits > 0) == (labels > 0)).astype(jnp.float32), -1
    ),
    "exact_match": lambda logits, labels: jnp.all((logits > 0) == (labels > 0), -1).astype(
        jnp.float32
    ),
    "mse": _squared_error,
    "mae": _absolute_error,
    "next_token_accuracy": causal_lm.next_token_accuracy,
    "nll": causal_lm.sequence_nll,
}

# Metrics where lower is better; Delta-m flips their sign.
LOWER_IS_BETTER = frozenset({"mse", "mae", "nll"})


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a multi-task model."""

    name: str
    head: str
    num_outputs: int
    loss: str
    metrics: tuple[str, ...]
    label: str
    head_hidden: tuple[int, ...] = ()

    def loss_fn(self, outputs: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
        """Mean loss over the examples that have a label for this task (0 if none do)."""
        return masked_mean(LOSSES[self.loss](outputs, labelled_only(labels, mask)), mask)

    def metric_sums(
        self, outputs: jax.Array, labels: jax.Array, mask: jax.Array
    ) -> dict[str, jax.Array]:
        """Per-metric sums over labelled examples plus their `count`, for accumulation."""
        labels = labelled_only(labels, mask)
        mask = mask.astype(jnp.float32)
        sums = {m: jnp.sum(METRICS[m](outputs, labels) * mask) for m in self.metrics}
        sums["count"] = jnp.sum(mask)
        return sums


def labelled_only(labels: jax.Array, mask: jax.Array) -> jax.Array:
    """`labels` with the rows that carry no label (`mask` [B] unset) set to 0. Unlabelled rows
    may hold anything (NaN for a missing regression target); multiplying their loss by 0 would
    still give NaN, in the loss and in its gradient, so they are replaced before the loss."""
    keep = mask.astype(bool).reshape(mask.shape + (1,) * (labels.ndim - mask.ndim))
    return jnp.where(keep, labels, jnp.zeros_like(labels))


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` [B] over entries where `mask` [B] is set; 0 when none is."""
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


_TASK_FIELDS = ("head", "num_outputs", "loss", "metrics", "label", "head_hidden")


def tasks_from_config(tasks_config: Mapping[str, Any]) -> tuple[Task, ...]:
    """Builds and validates the tasks declared in `config.tasks`, in a stable (sorted) order."""
    if not tasks_config:
        raise ConfigError("config.tasks is empty: declare at least one task.")
    tasks = []
    for name in sorted(tasks_config):
        spec = dict(tasks_config[name])
        field = f"tasks.{name}"
        unknown = sorted(set(spec) - set(_TASK_FIELDS))
        if unknown:
            raise ConfigError(
                f"Task {name!r} has unknown field(s) {', '.join(unknown)} (config {field}). "
                f"Accepted: {', '.join(_TASK_FIELDS)}."
            )
        head = spec.get("head", "classification")
        HEADS.get(head, field=f"{field}.head")
        default_loss, default_metrics = HEAD_DEFAULTS[head]
        loss = spec.get("loss") or default_loss
        if loss not in LOSSES:
            raise unknown_name("loss", loss, LOSSES, field=f"{field}.loss")
        metrics = tuple(spec.get("metrics") or default_metrics)
        for metric in metrics:
            if metric not in METRICS:
                raise unknown_name("metric", metric, METRICS, field=f"{field}.metrics")
        num_outputs = spec.get("num_outputs")
        if not isinstance(num_outputs, int) or num_outputs < 1:
            raise ConfigError(
                f"Task {name!r} needs a positive integer num_outputs (config {field}.num_outputs),"
                f" got {num_outputs!r}."
            )
        tasks.append(
            Task(
                name=name,
                head=head,
                num_outputs=num_outputs,
                loss=loss,
                metrics=metrics,
                label=spec.get("label") or name,
                head_hidden=tuple(spec.get("head_hidden") or ()),
            )
        )
    return tuple(tasks)


def check_labels(tasks: Sequence[Task], labels: Mapping[str, np.ndarray], masks, split: str):
    """Fails with one clear `DataError` if a task's labels don't fit its head.

    Runs on the host arrays before anything is compiled: an unknown label field, a class label
    outside [0, num_outputs), or a multi-label / regression target of the wrong width.
    """
    for task in tasks:
        if task.label not in labels:
            raise ConfigError(
                f"Task {task.name!r} reads label field {task.label!r}, which the data set does "
                f"not have (config tasks.{task.name}.label). Label fields: "
                f"{', '.join(sorted(labels))}."
            )
        y = np.asarray(labels[task.label])[np.asarray(masks[task.label], bool)]
        if y.size == 0:
            continue
        if task.loss == "causal_lm":  # token ids: the LM head's vocabulary is the check
            continue
        if task.loss == "softmax_cross_entropy":  # class indices
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= task.num_outputs:
                raise DataError(
                    f"Task {task.name!r}: {split} labels span [{low}, {high}] but the task has "
                    f"num_outputs={task.num_outputs}, so classes must lie in "
                    f"[0, {task.num_outputs - 1}]. Set --config.tasks.{task.name}.num_outputs="
                    f"{high + 1} or fix the labels."
                )
        else:
            width = 1 if y.ndim == 1 else y.shape[-1]
            if width != task.num_outputs:
                raise DataError(
                    f"Task {task.name!r}: {split} targets have width {width} but num_outputs="
                    f"{task.num_outputs}. Set --config.tasks.{task.name}.num_outputs={width}."
                )
