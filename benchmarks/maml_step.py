"""One second-order MAML meta-step, ours against PyTorch peers, in one process.

The setting of MAML's Omniglot experiments: conv4 (64 filters, 3x3, batch norm, ReLU, stride-2
convolutions, mean-pooled), 28x28 inputs, 5-way 1-shot with 15 queries per class, meta-batch
32, one inner SGD step, second order, Adam on the meta-parameters. Every implementation runs
the whole meta-step: inner step per task, query loss, meta-gradient, Adam update.

- ours: the engine's jitted train step (`mtl.runs.meta.make_train_step`, the meta-batch under
  `shard_map` on a one-device mesh), `jax.vmap` over tasks, with conv4's convolutions in the
  `--conv` form (`matmul`: shifted slices and one matmul; `xla`: `lax.conv_general_dilated`).
- torch.func: a Python loop over tasks; the inner gradient by `torch.func.grad` of a
  `functional_call`, the query loss accumulated, one `backward()` for the meta-gradient.
- higher: the loop of `higher`'s MAML example: `innerloop_ctx` with a differentiable SGD,
  one `backward()` per task.

Rounds alternate between the implementations, so all see the same machine load; medians.
`--precision=float32,bfloat16` times both precisions (ours with `config.precision`, the
peers under `torch.autocast`), each compared with the fastest peer of the same precision.

    .venv/bin/python -m benchmarks.maml_step --rounds=3 --steps=3
    .venv/bin/python -m benchmarks.maml_step --peers= --profile   # where our step's time goes
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
import optax
import torch
from absl import flags

from benchmarks import precision, torch_device, xla_ops
from mtl import allocator, entry, parallel
from mtl.meta import maml
from mtl.meta import model as mm
from mtl.models import default_config
from mtl.models.conv_ops import same_pads
from mtl.runs.meta import make_train_step
from mtl.train import TrainState

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timing rounds (medians are reported).")
_STEPS = flags.DEFINE_integer("steps", 3, "Meta-steps per round and implementation.")
_CONV = flags.DEFINE_list("conv", ["matmul"], "Our conv4 forms to time: matmul and/or xla.")
_PEERS = flags.DEFINE_list("peers", ["torch.func", "higher"], "PyTorch peers to time.")
_PROFILE = flags.DEFINE_bool("profile", False, "Then print where our step spends its time.")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (_ROUNDS, _STEPS, _CONV, _PEERS, _PROFILE):
    flags.FLAGS[_holder.name].allow_override = True

WAYS, SHOTS, QUERIES, META_BATCH, FILTERS, SIZE = 5, 1, 15, 32, 64, 28
INNER_LR, META_LR = 0.4, 1e-3


def make_episodes(seed: int = 0, tasks: int = META_BATCH, queries: int = QUERIES) -> dict:
    """Random images and labels of the benchmark's shapes: x [B, n, 28, 28, 1], y [B, n]."""
    rng = np.random.default_rng(seed)

    def part(per_class):
        n = WAYS * per_class
        x = rng.random((tasks, n, SIZE, SIZE, 1), dtype=np.float32)
        y = np.tile(np.repeat(np.arange(WAYS, dtype=np.int32), per_class), (tasks, 1))
        return {"x": x, "y": y}

    return {"support": part(SHOTS), "query": part(queries)}


# ---- ours ------------------------------------------------------------------------------------
def our_learner(conv: str, filters: int = FILTERS, dtype: str = "float32"):
    """`(learner, meta_params, bn_state)`: second-order MAML, one inner step, on conv4."""
    config = default_config()
    config.trunk = "conv4"
    config.conv4.update(filters=filters, downsample="stride", pooling="mean", conv=conv)
    shape = (SIZE, SIZE, 1)
    model, params, state = mm.build(config, "classification", WAYS, shape, seed=0, precision=dtype)
    learner = maml.build(model, params, state, maml.MamlOptions(inner_lr=INNER_LR))
    meta, mstate = learner.init(params, state)
    return learner, meta, mstate


def ours(conv: str, episodes: dict, dtype: str = "float32"):
    """`(compile_seconds, step, hlo_text)`: our jitted meta-step on one device, compiled."""
    learner, meta, mstate = our_learner(conv, dtype=dtype)
    tx = optax.adam(META_LR)
    train_state = TrainState.create(meta, mstate, tx, seed=0, losses=("meta-loss",))
    mesh = parallel.make_mesh({"data": 1})
    step = jax.jit(make_train_step(learner, tx, mesh, WAYS, "accuracy"), donate_argnums=0)
    batch = jax.device_put(episodes)
    start = time.perf_counter()
    compiled = step.lower(train_state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": jax.device_put(train_state)}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    return compile_s, run, compiled.as_text()


# ---- PyTorch ---------------------------------------------------------------------------------
class TorchConv4(torch.nn.Module):
    """MAML's Omniglot conv4 in PyTorch (NCHW).

    `same=False` (timed) pads each convolution by 1 on every side, PyTorch's own form; the
    output shapes and FLOPs are ours, but at even sizes XLA's SAME pads (0, 1) instead of
    (1, 1). `same=True` pads exactly as SAME (an explicit `F.pad`, about 2.7x slower here), so
    that the parity test compares the very same function.
    """

    def __init__(self, filters: int = FILTERS, ways: int = WAYS, same: bool = False):
        super().__init__()
        pad = 0 if same else 1
        self.same = same
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(cin, filters, 3, stride=2, padding=pad)
            for cin in (1, filters, filters, filters)
        )
        # Flax's BatchNorm: epsilon 1e-5, running average decay 0.9 (torch's momentum 0.1).
        self.norms = torch.nn.ModuleList(
            torch.nn.BatchNorm2d(filters, momentum=0.1) for _ in range(4)
        )
        self.head = torch.nn.Linear(filters, ways)

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            if self.same:
                (top, bottom), (left, right) = (same_pads(n, 3, 2) for n in x.shape[2:])
                x = torch.nn.functional.pad(x, (left, right, top, bottom))
            x = torch.relu(norm(conv(x)))
        return self.head(x.mean(dim=(2, 3)))

    @torch.no_grad()
    def load_jax(self, params: dict) -> TorchConv4:
        """Copies our meta-parameters `{"trunk", "head"}` (Flax layouts) into this module."""
        blocks = params["trunk"]["blocks"]
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            conv.weight.copy_(
                torch.from_numpy(np.array(blocks[i]["conv"]["kernel"]).transpose(3, 2, 0, 1))
            )
            conv.bias.copy_(torch.from_numpy(np.array(blocks[i]["conv"]["bias"])))
            norm.weight.copy_(torch.from_numpy(np.array(blocks[i]["norm"]["scale"])))
            norm.bias.copy_(torch.from_numpy(np.array(blocks[i]["norm"]["bias"])))
        self.head.weight.copy_(torch.from_numpy(np.array(params["head"]["out"]["kernel"]).T))
        self.head.bias.copy_(torch.from_numpy(np.array(params["head"]["out"]["bias"])))
        return self


def torch_episodes(episodes: dict) -> dict:
    def conv(part):
        x = torch.from_numpy(np.array(part["x"])).permute(0, 1, 4, 2, 3).contiguous()
        return {"x": x, "y": torch.from_numpy(np.array(part["y"])).long()}

    return torch_device.put({k: conv(v) for k, v in episodes.items()})


def torch_func_meta_loss(model: TorchConv4, data: dict, inner_lr: float) -> torch.Tensor:
    """Mean query loss after one inner step per task, differentiable to second order."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    loss_fn = torch.nn.functional.cross_entropy

    def support_loss(p, b, x, y):
        # The BN buffers are an input, so that their running-average update is allowed.
        return loss_fn(torch.func.functional_call(model, (p, b), (x,)), y)

    inner_grad = torch.func.grad(support_loss)
    tasks = data["support"]["x"].shape[0]
    total = 0.0
    for t in range(tasks):
        grads = inner_grad(params, buffers, data["support"]["x"][t], data["support"]["y"][t])
        fast = {k: params[k] - inner_lr * grads[k] for k in params}
        out = torch.func.functional_call(model, (fast, buffers), (data["query"]["x"][t],))
        total = total + loss_fn(out, data["query"]["y"][t])
    return total / tasks


def torch_func_step(episodes: dict):
    """A meta-step with `torch.func`: per-task inner gradient, one meta-backward."""
    model = TorchConv4().to(torch_device.device())
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)
    data = torch_episodes(episodes)

    def run():
        opt.zero_grad()
        torch_func_meta_loss(model, data, INNER_LR).backward()
        opt.step()
        torch_device.synchronize()

    return run


def higher_meta_backward(model: TorchConv4, data: dict, inner_lr: float) -> None:
    """Meta-gradients into `.grad`, as `higher`'s MAML example: one backward per task."""
    import higher

    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    loss_fn = torch.nn.functional.cross_entropy
    tasks = data["support"]["x"].shape[0]
    for t in range(tasks):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (f, diff):
            diff.step(loss_fn(f(data["support"]["x"][t]), data["support"]["y"][t]))
            loss = loss_fn(f(data["query"]["x"][t]), data["query"]["y"][t]) / tasks
            loss.backward()


def higher_step(episodes: dict):
    """A meta-step with `higher`."""
    model = TorchConv4().to(torch_device.device())
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)
    data = torch_episodes(episodes)

    def run():
        opt.zero_grad()
        higher_meta_backward(model, data, INNER_LR)
        opt.step()
        torch_device.synchronize()

    return run


def main(argv):
    del argv
    episodes = make_episodes()
    runs, compile_times, hlo_texts, precisions = {}, {}, {}, {}
    peers = {"torch.func": torch_func_step, "higher": higher_step}
    for dtype in precision.PRECISION.value:
        for conv in _CONV.value:
            name = f"ours (jax, conv={conv}, {dtype})"
            compile_times[name], runs[name], hlo_texts[name] = ours(conv, episodes, dtype)
            precisions[name] = dtype
        for peer in _PEERS.value:
            name = f"{peer} ({dtype})"
            runs[name] = precision.in_precision(peers[peer](episodes), dtype)
            precisions[name] = dtype
    for run in runs.values():
        run()  # warm-up: first-call costs (allocations, autotuning) out of the timings
    times = {k: [] for k in runs}
    for _ in range(_ROUNDS.value):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(_STEPS.value):
                run()
            times[name].append((time.perf_counter() - start) / _STEPS.value)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"Second-order MAML meta-step: conv4 {FILTERS} filters, {SIZE}x{SIZE}, {WAYS}-way "
        f"{SHOTS}-shot, {QUERIES} queries/class, meta-batch {META_BATCH}, 1 inner step; "
        f"medians of {_ROUNDS.value} rounds x {_STEPS.value} steps; jax {jax.__version__}, "
        f"torch {torch.__version__} on {torch_device.device()} "
        f"({torch.get_num_threads()} threads); malloc: {allocator.current_allocator()}"
    )
    print("| implementation | s / step | compile s |\n| --- | --- | --- |")
    for name, t in med.items():
        compiled = f"{compile_times[name]:.1f}" if name in compile_times else "-"
        print(f"| {name} | {t:.3f} | {compiled} |")
    for name in compile_times:
        peer_times = {
            k: v
            for k, v in med.items()
            if k not in compile_times and precisions[k] == precisions[name]
        }
        if peer_times:
            fastest = min(peer_times, key=peer_times.get)
            print(
                f"{name} / fastest peer ({fastest}): {med[name] / peer_times[fastest]:.2f}x "
                "the time per step"
            )
    for name in compile_times if _PROFILE.value else ():
        run_steps = lambda n, run=runs[name]: [run() for _ in range(n)]  # noqa: E731
        report = xla_ops.report(run_steps, _STEPS.value, hlo_text=hlo_texts[name])
        print(f"\n{name}:\n{report}")


if __name__ == "__main__":
    entry.run(main)
