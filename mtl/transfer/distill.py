"""Knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015).

The student matches the teacher's outputs softened by a temperature, mixed with the ordinary
loss on the labels:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + (1 - alpha) * CE(student, labels)

The T^2 keeps the soft term's gradients on the scale of the hard term's as T grows (Hinton et
al., Sec. 2). Teacher and student are any two models of the engine with the same tasks: the
teacher's outputs are computed inside the student's train step (`mtl.runs.distillation`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mtl.errors import ConfigError
from mtl.tasks import Task, masked_mean


def check_options(temperature: float, alpha: float) -> None:
    if temperature <= 0:
        raise ConfigError(f"distill.temperature must be > 0, got {temperature}.")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distill.alpha must be in [0, 1], got {alpha}.")


def soft_cross_entropy(student: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
    """Per-example `T^2 KL(softmax(teacher/T) || softmax(student/T))`, [batch]."""
    t = jax.nn.log_softmax(teacher / temperature, axis=-1)
    s = jax.nn.log_softmax(student / temperature, axis=-1)
    return temperature**2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def distillation_loss(
    task: Task,
    student: jax.Array,
    teacher: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    temperature: float,
    alpha: float,
) -> jax.Array:
    """The mixed loss of one classification task, a mean over the examples of `mask`."""
    teacher = jax.lax.stop_gradient(teacher)
    soft = masked_mean(soft_cross_entropy(student, teacher, temperature), mask)
    return alpha * soft + (1.0 - alpha) * task.loss_fn(student, labels, mask)
