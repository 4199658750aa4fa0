"""Multi-task train-step time of each gradient method, ours against PyTorch, in one process.

Six tasks on a conv4 trunk (Omniglot-sized 28x28 images, every example labelled for one task,
as Omniglot-alphabets), Adam. `--layout` picks the batch layout: `mixed` (the rows of all tasks
in one batch-norm batch) or `per_task` (one group of 16 rows per task, batch norm per group:
LibMTL's `multi_input`, where the peer runs the trunk once per task and each task's backward
pass only reaches its own rows). Ours: the engine's jitted `train_step` (mtl/runs/supervised_step)
with each method from `mtl.weighting`; per-task gradients come from one `vmap` over a `vjp`.
The peer: the same model in PyTorch, with the per-task gradients taken as LibMTL does (one
`backward(retain_graph=True)` per task, shared gradients read and zeroed after each), the
method's solve in torch / numpy / scipy as LibMTL writes it, then `optimizer.step()`. A second
peer where TorchJD has the method: its `mtl_backward` (the Jacobian of the losses with respect
to the shared parameters, by `torch.vmap`) and `jac_to_grad` with the matching aggregator.

Rounds alternate between ours and the peer for every method, so both see the same machine
load; the medians over rounds are printed, then the ratios.

    .venv/bin/python -m benchmarks.mtl_step --rounds=5 --steps=10
    .venv/bin/python -m benchmarks.mtl_step --layout=per_task --conv=matmul
    .venv/bin/python -m benchmarks.mtl_step --rounds=1 --profile=equal,pcgrad  # op breakdown
    .venv/bin/python -m benchmarks.mtl_step --precision=float32,bfloat16  # a table for each

In bfloat16 ours runs the trunk with `config.precision="bfloat16"` and the peer its forward
passes under `torch.autocast`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import optax
import scipy.optimize
import torch
from absl import app, flags

from benchmarks import precision, torch_device, xla_ops
from mtl import allocator, entry
from mtl.models import build_model, default_config
from mtl.runs.supervised_step import make_steps
from mtl.tasks import tasks_from_config
from mtl.weighting import get_weighting

_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timing rounds (medians are reported).")
_STEPS = flags.DEFINE_integer("steps", 10, "Train steps per round and method.")
_BATCH = flags.DEFINE_integer("batch_size", 96, "Global batch (split evenly over the tasks).")
_FILTERS = flags.DEFINE_integer("filters", 64, "conv4 filters.")
_TASKS = flags.DEFINE_integer("num_tasks", 6, "Number of tasks.")
_CONV = flags.DEFINE_enum("conv", "xla", ["xla", "matmul"], "conv4's convolution form (ours).")
_TRUNK = flags.DEFINE_enum(
    "trunk",
    "conv4",
    ["conv4", "bert"],
    "Shared trunk: conv4 on 28x28 images, or a BERT "
    "encoder with random weights (mean pooling, dropout 0) on random token ids.",
)
_BERT_SIZES = flags.DEFINE_list(
    "bert_sizes", ["256", "4", "32"], "bert trunk: hidden size, layers, tokens per example."
)
_LAYOUT = flags.DEFINE_enum(
    "layout", "mixed", ["mixed", "per_task"], "Batch layout (both sides): see the docstring."
)
_PROFILE = flags.DEFINE_list("profile", [], "Methods whose step to profile after timing.")
_METHODS = flags.DEFINE_list(
    "methods", [], "Labels of the methods to time (default: all); `equal` is always timed."
)
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (_ROUNDS, _STEPS, _BATCH, _FILTERS, _TASKS, _CONV, _TRUNK, _BERT_SIZES, _LAYOUT,
                _PROFILE, _METHODS):  # fmt: skip
    flags.FLAGS[_holder.name].allow_override = True
_CLASSES = 20
_VOCAB = 1000  # bert trunk


def bert_sizes() -> tuple[int, int, int]:
    """`(hidden, layers, tokens)` of the bert trunk, from `--bert_sizes`; BERT's shape
    otherwise (64-wide heads, feed-forward 4x hidden: see `bert_shape`)."""
    try:
        hidden, layers, tokens = (int(v) for v in _BERT_SIZES.value)
    except ValueError:
        raise app.UsageError(
            f"--bert_sizes: {','.join(_BERT_SIZES.value)!r} is not hidden,layers,tokens "
            "(three integers, for example 256,4,32)."
        ) from None
    if hidden % 64 or min(hidden, layers, tokens) < 1:
        raise app.UsageError(
            f"--bert_sizes: hidden {hidden} must be a positive multiple of 64 (the heads are "
            f"64 wide), layers {layers} and tokens {tokens} positive."
        )
    return hidden, layers, tokens


def bert_shape() -> dict:
    """The bert trunk's shape, once for both sides: ours (`model.bert`) and the peers'
    `BertConfig` name the same quantities differently."""
    hidden, layers, tokens = bert_sizes()
    return dict(hidden=hidden, layers=layers, heads=hidden // 64, ffn=4 * hidden, tokens=tokens)


def trunk_width() -> int:
    return bert_sizes()[0] if _TRUNK.value == "bert" else _FILTERS.value


# (label, our weighting name, its options, the LibMTL-style peer's method, TorchJD's aggregator).
# TorchJD's CAGrad and Nash-MTL need cvxpy, which the test extras do not install.
METHODS = [
    ("equal", "equal", {}, "equal", None),
    ("pcgrad", "pcgrad", {}, "pcgrad", "PCGrad"),
    ("mgda-ub", "mgda", {"wrt": "representation"}, "mgda_ub", None),
    ("cagrad", "cagrad", {}, "cagrad", None),
    ("nash_mtl", "nash_mtl", {}, "nash_mtl", None),
    ("aligned_mtl", "aligned_mtl", {}, "aligned_mtl", "AlignedMTL"),
    ("imtl_g", "imtl_g", {}, None, "IMTLG"),
    ("upgrad", "upgrad", {}, None, "UPGrad"),
    ("fairgrad", "fairgrad", {}, None, "FairGrad"),
    ("pcgrad (wrt=representation)", "pcgrad", {"wrt": "representation"}, None, None),
    # The Gram-matrix route: the update of the exact rows above without their [T, P]
    # Jacobian (one more backward pass). TorchJD's column is its autogram Engine there.
    (
        "pcgrad (wrt=shared_gramian)",
        "pcgrad",
        {"wrt": "shared_gramian"},
        "pcgrad",
        "autogram:PCGrad",
    ),
    ("upgrad (wrt=shared_gramian)", "upgrad", {"wrt": "shared_gramian"}, None, "autogram:UPGrad"),
]


def make_batch(num_tasks: int, batch: int, seed: int = 0, grouped: bool = False) -> dict:
    """Random images, each labelled for one task: task t owns rows t, t + T, ... or, when
    `grouped`, the t-th block of batch / T rows (the `per_task` layout)."""
    rng = np.random.default_rng(seed)
    owner = np.arange(batch) // (batch // num_tasks) if grouped else np.arange(batch) % num_tasks
    labels, masks = {}, {}
    for t in range(num_tasks):
        masks[f"t{t}"] = owner == t
        labels[f"t{t}"] = np.where(owner == t, rng.integers(0, _CLASSES, batch), -1).astype(
            np.int32
        )
    if _TRUNK.value == "bert":
        ids = rng.integers(1, _VOCAB, (batch, bert_sizes()[2])).astype(np.int32)
        inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    else:
        inputs = rng.random((batch, 28, 28, 1), dtype=np.float32)
    return {"inputs": inputs, "labels": labels, "masks": masks}


# --- ours ------------------------------------------------------------------------------------


def ours(name: str, options: dict, batch: dict, num_tasks: int, dtype: str = "float32"):
    """`(run, hlo_text, compile_s, temp_bytes)`: `run(n)` times n of our compiled train steps
    (seconds per step); `compile_s` is the seconds lowering and compiling the step took;
    `temp_bytes` is XLA's account of the step's temporary buffers (beside its arguments)."""
    tasks = tasks_from_config(
        {f"t{t}": dict(head="classification", num_outputs=_CLASSES) for t in range(num_tasks)}
    )
    config = default_config()
    config.conv4.filters = _FILTERS.value
    config.conv4.conv = _CONV.value
    input_shape = (28, 28, 1)
    if _TRUNK.value == "bert":
        b = bert_shape()
        config.trunk = "bert"
        config.bert.update(
            vocab_size=_VOCAB, hidden_size=b["hidden"], num_layers=b["layers"],
            num_heads=b["heads"], intermediate_size=b["ffn"],
            max_position_embeddings=b["tokens"], dropout=0.0, attention_dropout=0.0,
        )  # fmt: skip
        input_shape = {"input_ids": (b["tokens"],), "attention_mask": (b["tokens"],)}
    model = build_model(config, tasks, input_shape, seed=0, precision=dtype)
    steps = make_steps(
        model,
        tasks,
        optax.adam(1e-3),
        get_weighting(name, options),
        seed=0,
        per_task_batch=_LAYOUT.value == "per_task",
    )
    state = jax.jit(steps.init)()
    batch = jax.device_put(batch)
    started = time.perf_counter()
    train_step = jax.jit(steps.train_step, donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - started
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)

    def run(n: int) -> float:
        nonlocal state
        start = time.perf_counter()
        for _ in range(n):
            state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - start) / n

    return run, train_step.as_text(), compile_s, train_step.memory_analysis().temp_size_in_bytes


# --- the PyTorch peer ------------------------------------------------------------------------


class TorchConv4(torch.nn.Module):
    def __init__(self, filters: int):
        super().__init__()
        layers, cin = [], 1
        for _ in range(4):
            layers += [
                torch.nn.Conv2d(cin, filters, 3, stride=2, padding=1),
                torch.nn.BatchNorm2d(filters),
                torch.nn.ReLU(),
            ]
            cin = filters
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


class TorchBert(torch.nn.Module):
    """transformers' BertModel with random weights and our trunk's sizes, mean-pooled; takes
    `[batch, 2, tokens]`: the ids and the attention mask stacked (so rows index together)."""

    def __init__(self):
        super().__init__()
        import transformers

        b = bert_shape()
        config = transformers.BertConfig(
            vocab_size=_VOCAB, hidden_size=b["hidden"], num_hidden_layers=b["layers"],
            num_attention_heads=b["heads"], intermediate_size=b["ffn"],
            max_position_embeddings=b["tokens"], hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        self.bert = transformers.BertModel(config, add_pooling_layer=False)

    def forward(self, x):
        ids, mask = x[:, 0], x[:, 1]
        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(h.dtype)
        return (h * weights).sum(1) / weights.sum(1)


def _pcgrad(grads: torch.Tensor) -> torch.Tensor:  # LibMTL PCGrad.backward
    pc = grads.clone()
    for i in range(len(grads)):
        order = list(np.random.permutation(len(grads)))
        for j in order:
            dot = torch.dot(pc[i], grads[j])
            if dot < 0:
                pc[i] -= dot * grads[j] / (grads[j].norm().pow(2) + 1e-8)
    return pc.sum(0)


def _min_norm(k: np.ndarray, iters: int = 250) -> np.ndarray:
    """LibMTL's `_find_min_norm_element` is a projected-gradient loop on the host; same here."""
    w = np.full(len(k), 1.0 / len(k))
    step = 1.0 / max(np.linalg.eigvalsh(k)[-1], 1e-12)
    for _ in range(iters):
        v = w - step * (k @ w)
        u = np.sort(v)[::-1]
        css = np.cumsum(u) - 1
        rho = np.nonzero(u - css / np.arange(1, len(u) + 1) > 0)[0][-1]
        w = np.maximum(v - css[rho] / (rho + 1), 0)
    return w


def _cagrad(grads: torch.Tensor, calpha=0.5) -> torch.Tensor:  # LibMTL CAGrad.backward
    gg = (grads @ grads.t()).float().cpu().numpy().astype(np.float64)
    num = len(gg)
    b = np.ones(num) / num
    c = calpha * np.sqrt(gg.mean() + 1e-8) + 1e-8
    res = scipy.optimize.minimize(
        lambda x: x @ gg @ b + c * np.sqrt(x @ gg @ x + 1e-8),
        b,
        bounds=[(0, 1)] * num,
        constraints={"type": "eq", "fun": lambda x: 1 - sum(x)},
    )
    gw = (grads * torch.tensor(res.x, dtype=grads.dtype, device=grads.device)[:, None]).sum(0)
    return (grads.mean(0) + c / (gw.norm() + 1e-8) * gw) / (1 + calpha**2)


def _nash(grads: torch.Tensor) -> torch.Tensor:
    """Nash-MTL's weights (K alpha = 1/alpha); the official cvxpy solve is replaced by scipy's
    L-BFGS-B on the same convex potential (cvxpy is not installed here)."""
    k = (grads @ grads.t()).float().cpu().numpy().astype(np.float64)
    k = k / np.linalg.norm(k)
    alpha = scipy.optimize.minimize(
        lambda a: 0.5 * a @ k @ a - np.sum(np.log(a)),
        np.ones(len(k)),
        jac=lambda a: k @ a - 1 / a,
        bounds=[(1e-9, None)] * len(k),
        method="L-BFGS-B",
    ).x
    return (torch.tensor(alpha, dtype=grads.dtype, device=grads.device)[:, None] * grads).sum(0)


def _aligned(grads: torch.Tensor) -> torch.Tensor:  # LibMTL Aligned_MTL.backward
    m = grads @ grads.t()
    lam, v = torch.linalg.eigh(m)
    tol = lam.max() * max(m.shape) * torch.finfo().eps
    rank = int((lam > tol).sum())
    order = torch.argsort(lam, descending=True)
    lam, v = lam[order][:rank], v[:, order][:, :rank]
    b = lam[-1].sqrt() * ((v @ torch.diag(1 / lam.sqrt())) @ v.t())
    return (b.sum(0)[:, None] * grads).sum(0)


SOLVES = {"pcgrad": _pcgrad, "cagrad": _cagrad, "nash_mtl": _nash, "aligned_mtl": _aligned}


class TorchSetup(NamedTuple):
    shared: list  # the trunk's parameters
    heads: torch.nn.ModuleList
    opt: torch.optim.Optimizer
    representations: Callable[[], list]  # the trunk's features: one tensor, or one per task
    losses_of: Callable[[list], list]  # features -> one loss per task
    trunk: torch.nn.Module


def torch_setup(batch: dict, num_tasks: int) -> TorchSetup:
    """The benchmark's model, batch and Adam in PyTorch, shared by both peers."""
    torch.manual_seed(0)
    trunk = TorchBert() if _TRUNK.value == "bert" else TorchConv4(_FILTERS.value)
    trunk = trunk.to(torch_device.device())
    heads = torch.nn.ModuleList(
        [torch.nn.Linear(trunk_width(), _CLASSES) for _ in range(num_tasks)]
    ).to(torch_device.device())
    shared = list(trunk.parameters())
    opt = torch.optim.Adam(list(shared) + list(heads.parameters()), lr=1e-3)
    if _TRUNK.value == "bert":
        inputs = batch["inputs"]
        x = torch.from_numpy(np.stack([inputs["input_ids"], inputs["attention_mask"]], 1)).long()
    else:
        x = torch.from_numpy(np.ascontiguousarray(batch["inputs"].transpose(0, 3, 1, 2)))
    ys = [torch.from_numpy(batch["labels"][f"t{t}"]).long() for t in range(num_tasks)]
    ms = [torch.from_numpy(batch["masks"][f"t{t}"]) for t in range(num_tasks)]
    x, ys, ms = torch_device.put((x, ys, ms))

    per_task = _LAYOUT.value == "per_task"
    xs = [x[m] for m in ms]

    def representations():
        """The trunk's features: one tensor, or (per_task, multi_input) one per task."""
        return [trunk(xt) for xt in xs] if per_task else [trunk(x)]

    def losses_of(zs):
        if per_task:
            return [
                torch.nn.functional.cross_entropy(heads[t](zs[t]), ys[t][ms[t]])
                for t in range(num_tasks)
            ]
        return [
            torch.nn.functional.cross_entropy(heads[t](zs[0][ms[t]]), ys[t][ms[t]])
            for t in range(num_tasks)
        ]

    return TorchSetup(shared, heads, opt, representations, losses_of, trunk)


def _timer(step: Callable[[], None]) -> Callable[[int], float]:
    """`run(n) -> seconds per step` after one warm-up step."""
    step()
    torch_device.synchronize()

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step()
        torch_device.synchronize()
        return (time.perf_counter() - start) / n

    return run


def torchjd_step(aggregator: str, setup: TorchSetup) -> Callable[[], None]:
    """TorchJD's multi-task step: `mtl_backward` (the Jacobian of the losses with respect to the
    shared parameters, heads their own gradients), then `jac_to_grad` with the aggregator."""
    from torchjd import aggregation
    from torchjd.autojac import jac_to_grad, mtl_backward

    aggregate = {
        "PCGrad": aggregation.PCGrad,
        "AlignedMTL": aggregation.AlignedMTL,
        "IMTLG": aggregation.IMTLG,
        "UPGrad": aggregation.UPGrad,
        "FairGrad": lambda: aggregation.FairGrad(alpha=1.0),
    }[aggregator]()

    def step():
        setup.opt.zero_grad()
        features = setup.representations()
        losses = setup.losses_of(features)
        mtl_backward(
            losses,
            features=features,
            tasks_params=[list(head.parameters()) for head in setup.heads],
            shared_params=setup.shared,
        )
        jac_to_grad(setup.shared, aggregate)
        setup.opt.step()

    return step


def torchjd_autogram_step(weighting: str, setup: TorchSetup) -> Callable[[], None]:
    """TorchJD's Gramian-based step, the peer of our `wrt="shared_gramian"`: its autogram
    `Engine` over the trunk gives the Gramian of the losses' Jacobian with respect to the
    trunk's parameters (module by module, the Jacobian never whole), the weighting turns it into
    weights, and one `backward` with those weights gives the update. `batch_dim=None`: batch
    norm couples the rows (TorchJD refuses its batched mode for it)."""
    from torchjd import aggregation
    from torchjd.autogram import Engine

    weights_of = {"PCGrad": aggregation.PCGradWeighting, "UPGrad": aggregation.UPGradWeighting}[
        weighting
    ]()
    engine = Engine(setup.trunk, batch_dim=None)

    def step():
        setup.opt.zero_grad()
        losses = torch.stack(setup.losses_of(setup.representations()))
        weights = weights_of(engine.compute_gramian(losses))
        losses.backward(weights)
        setup.opt.step()

    return step


def jd_step(spec: str, setup: TorchSetup) -> Callable[[], None]:
    """TorchJD's step for `spec`: an aggregator's name (autojac) or `autogram:<name>`."""
    kind, _, name = spec.rpartition(":")
    make = torchjd_autogram_step if kind == "autogram" else torchjd_step
    return make(name, setup)


def jd_peer(spec: str, batch: dict, num_tasks: int):
    """`run(n) -> seconds per step` of TorchJD's step for `spec` (see `jd_step`)."""
    return _timer(jd_step(spec, torch_setup(batch, num_tasks)))


def peer(method: str, batch: dict, num_tasks: int):
    shared, _, opt, representations, losses_of, _ = torch_setup(batch, num_tasks)

    def step():
        opt.zero_grad()
        if method == "equal":
            sum(losses_of(representations())).backward()
        elif method == "mgda_ub":  # LibMTL rep_grad: gradients at a detached representation
            zs = representations()
            reps = [z.detach().requires_grad_(True) for z in zs]
            losses = losses_of(reps)
            zg = []
            for t, loss in enumerate(losses):
                loss.backward(retain_graph=t + 1 < num_tasks)
                # (per_task: a task's loss reaches only its own representation)
                zg.append(
                    torch.cat(
                        [
                            (torch.zeros_like(r) if r.grad is None else r.grad).reshape(-1)
                            for r in reps
                        ]
                    )
                )
                for r in reps:
                    r.grad = None
            zg = torch.stack(zg)
            w = _min_norm((zg @ zg.t()).float().cpu().numpy().astype(np.float64))
            combined = (torch.tensor(w, dtype=zg.dtype, device=zg.device)[:, None] * zg).sum(0)
            pieces = combined.split([z.numel() for z in zs])
            torch.autograd.backward(
                zs, [p.reshape(z.shape) for p, z in zip(pieces, zs, strict=True)]
            )
        else:  # LibMTL mode='backward': one backward pass per task
            losses = losses_of(representations())
            grads = []
            for t, loss in enumerate(losses):
                loss.backward(retain_graph=t + 1 < num_tasks)
                grads.append(torch.cat([p.grad.reshape(-1) for p in shared]))
                for p in shared:
                    p.grad.zero_()
            new = SOLVES[method](torch.stack(grads))
            offset = 0
            for p in shared:
                p.grad.copy_(new[offset : offset + p.numel()].reshape(p.shape))
                offset += p.numel()
        opt.step()

    return _timer(step)


def main(argv):
    del argv
    for dtype in precision.PRECISION.value:
        table(dtype)


def _autocast(run, dtype: str):
    """A peer's `run(n) -> seconds` with its steps under `torch.autocast` for `dtype`."""
    if run is None:
        return None

    def wrapped(n: int) -> float:
        with precision.autocast(dtype):
            return run(n)

    return wrapped


def trunk_description() -> str:
    if _TRUNK.value == "bert":
        hidden, layers, tokens = bert_sizes()
        return f"bert ({layers} layers, hidden {hidden}, {tokens} tokens, random weights)"
    return f"conv4 ({_FILTERS.value} filters, ours conv={_CONV.value})"


def table(dtype: str) -> None:
    """Times every method in `dtype` and prints the table."""
    num_tasks = _TASKS.value
    batch = make_batch(num_tasks, _BATCH.value, grouped=_LAYOUT.value == "per_task")
    runners, hlo_texts, compile_s, temp_bytes = [], {}, {}, {}
    # One runner per peer method, shared by the rows that run it (the Gram route's rows).
    peers, jd_peers = {}, {}
    unknown = set(_METHODS.value) - {m[0] for m in METHODS}
    if unknown:
        known = [m[0] for m in METHODS]
        raise app.UsageError(f"--methods: unknown {sorted(unknown)}; known: {known}")
    chosen = [m for m in METHODS if not _METHODS.value or m[0] in {"equal", *_METHODS.value}]
    for label, name, options, peer_method, aggregator in chosen:
        run_ours, hlo_texts[label], compile_s[label], temp_bytes[label] = ours(
            name, options, batch, num_tasks, dtype
        )
        if peer_method and peer_method not in peers:
            peers[peer_method] = _autocast(peer(peer_method, batch, num_tasks), dtype)
        if aggregator and aggregator not in jd_peers:
            jd_peers[aggregator] = _autocast(jd_peer(aggregator, batch, num_tasks), dtype)
        runners.append((label, run_ours, peers.get(peer_method), jd_peers.get(aggregator)))
    times = {label: ([], [], []) for label, *_ in runners}
    for _ in range(_ROUNDS.value):
        timed_this_round = {}  # a shared peer is timed once per round
        for label, *runs in runners:
            for timed, run in zip(times[label], runs, strict=True):
                if run is not None:
                    if id(run) not in timed_this_round:
                        timed_this_round[id(run)] = run(_STEPS.value)
                    timed.append(timed_this_round[id(run)])
    med = {k: [statistics.median(t) if t else None for t in ts] for k, ts in times.items()}
    ours_eq, peer_eq, _ = med["equal"]
    print(
        f"{num_tasks} tasks, {trunk_description()}, "
        f"batch {_BATCH.value}, layout {_LAYOUT.value}, precision {dtype}, "
        f"{_ROUNDS.value} rounds x {_STEPS.value} steps, medians; torch threads "
        f"{torch.get_num_threads()} on {torch_device.device()}, jax devices "
        f"{jax.device_count()} ({jax.devices()[0].platform}), "
        f"malloc {allocator.current_allocator()}"
    )
    print(
        "| method | ours (ms) | ours / our equal | PyTorch (ms) | PyTorch / its equal "
        "| PyTorch / ours | TorchJD (ms) | TorchJD / ours | our compile (s) | our temp (MB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, (o, p, jd) in med.items():
        peer_cells = (
            f"{1e3 * p:.1f} | {p / peer_eq:.2f} | {p / o:.2f}" if p is not None else "- | - | -"
        )
        jd_cells = f"{1e3 * jd:.1f} | {jd / o:.2f}" if jd is not None else "- | -"
        print(
            f"| {label} | {1e3 * o:.1f} | {o / ours_eq:.2f} | {peer_cells} | {jd_cells} "
            f"| {compile_s[label]:.1f} | {temp_bytes[label] / 1e6:.1f} |"
        )
    for label, run_ours, *_ in runners:
        if label in _PROFILE.value:
            report = xla_ops.report(run_ours, _STEPS.value, hlo_text=hlo_texts[label])
            print(f"\nours, {label}:\n{report}")


if __name__ == "__main__":
    entry.run(main)
