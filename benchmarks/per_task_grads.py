"""Per-task gradients of a conv4 trunk: one `vmap` over the pullback against T pullbacks
unrolled in the same jitted program, the vmap in chunks of k tasks (unrolled over chunks, or in
a `lax.map`), and one summed gradient for scale. Same model and batch as
`benchmarks/mtl_step.py` (6 tasks, 64 filters, batch 96); medians over rounds.

With `--layout=per_task` (one group of 16 rows per task, batch norm per group) it times the
engine's own two computations instead: one summed gradient (`base.weighted_update`) and all
six per-task gradients from one backward pass (`base.per_task_shared_grads` on the
per-task-batch objective of `make_steps`).

    .venv/bin/python -m benchmarks.per_task_grads --rounds=5
    .venv/bin/python -m benchmarks.per_task_grads --rounds=5 --layout=per_task --conv=matmul
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import flags

# The same batch, and the same --rounds, --num_tasks, --conv and --layout flags, as the step
# benchmark.
from benchmarks.mtl_step import _CONV, _LAYOUT, _ROUNDS, _TASKS, make_batch
from mtl import allocator, entry
from mtl.models import build_model, default_config
from mtl.models.functional import PureModule
from mtl.runs.supervised_step import make_steps
from mtl.tasks import tasks_from_config
from mtl.weighting import base, get_weighting

_CHUNKS = flags.DEFINE_list("chunks", ["2", "3"], "Chunk sizes of the chunked vmap forms.")


def per_task_layout(model, tasks, num: int) -> dict:
    """The engine's summed and per-task gradients on the per-task-batch objective."""
    equal = get_weighting("equal")
    steps = make_steps(model, tasks, optax.identity(), equal, 0, per_task_batch=True)
    model_state = steps.init().model_state
    batch = jax.device_put(make_batch(num, 96, grouped=True))

    def objective(s, hp):
        return steps.objective({"trunk": s, "heads": hp}, model_state, batch, True)

    def summed(s, hp):
        return base.weighted_update(objective(s, hp), jnp.ones(num)).shared_grads

    def per_task(s, hp):
        return base.per_task_shared_grads(objective(s, hp))[0]

    return {"summed (one gradient)": summed, "per-task, one copy of the trunk per group": per_task}


def main(argv):
    del argv
    num = _TASKS.value
    tasks = tasks_from_config(
        {f"t{t}": dict(head="classification", num_outputs=20) for t in range(num)}
    )
    config = default_config()
    config.conv4.filters = 64
    config.conv4.conv = _CONV.value
    model = build_model(config, tasks, (28, 28, 1), 0)
    trunk, trunk_params, trunk_state = PureModule.split(model.trunk)
    heads = {name: PureModule.split(head) for name, head in model.heads.items()}
    head_params = {name: h[1] for name, h in heads.items()}
    batch = jax.device_put(make_batch(num, 96))

    def losses(shared, hp):
        z, _ = trunk.apply(shared, trunk_state, batch["inputs"], train=True)
        return jnp.stack(
            [
                t.loss_fn(
                    heads[t.name][0].apply(hp[t.name], {}, z)[0],
                    batch["labels"][t.name],
                    batch["masks"][t.name],
                )
                for t in tasks
            ]
        )

    def summed(s, hp):
        return jax.grad(lambda s: jnp.sum(losses(s, hp)))(s)

    def vmapped(s, hp):
        _, pullback = jax.vjp(lambda s: losses(s, hp), s)
        return jax.vmap(pullback)(jnp.eye(num))

    def unrolled(s, hp):
        _, pullback = jax.vjp(lambda s: losses(s, hp), s)
        return [pullback(row) for row in jnp.eye(num)]

    def chunked(k: int):  # vmap over k tasks at a time, the chunks unrolled
        def grads(s, hp):
            _, pullback = jax.vjp(lambda s: losses(s, hp), s)
            eye = jnp.eye(num)
            return [jax.vmap(pullback)(eye[i : i + k]) for i in range(0, num, k)]

        return grads

    def mapped(k: int):  # the same chunks in a lax.map (a while loop)
        def grads(s, hp):
            _, pullback = jax.vjp(lambda s: losses(s, hp), s)
            return jax.lax.map(pullback, jnp.eye(num), batch_size=k)

        return grads

    fns = {"summed (one gradient)": summed, "vmap over pullback": vmapped, "unrolled": unrolled}
    for k in map(int, _CHUNKS.value):
        fns[f"vmap in chunks of {k}, unrolled"] = chunked(k)
        fns[f"vmap in chunks of {k}, lax.map"] = mapped(k)
    if _LAYOUT.value == "per_task":
        fns = per_task_layout(model, tasks, num)
    fns = {k: jax.jit(f) for k, f in fns.items()}
    for f in fns.values():
        jax.block_until_ready(f(trunk_params, head_params))
    times = {k: [] for k in fns}
    for _ in range(_ROUNDS.value):
        for k, f in fns.items():
            start = time.perf_counter()
            for _ in range(3):
                out = f(trunk_params, head_params)
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - start) / 3)
    base = statistics.median(times["summed (one gradient)"])
    print(
        f"{num} tasks, conv4 64 filters (conv={_CONV.value}), batch 96, layout {_LAYOUT.value}, "
        f"medians of {_ROUNDS.value} rounds, malloc {allocator.current_allocator()}"
    )
    print("| computation | ms | / summed |\n| --- | --- | --- |")
    for k, v in times.items():
        print(f"| {k} | {1e3 * statistics.median(v):.1f} | {statistics.median(v) / base:.2f} |")


if __name__ == "__main__":
    entry.run(main)
