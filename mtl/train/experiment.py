"""What a run is made of (`Experiment`), what it ends with (`Result`), and its evaluators.

A kind of run (`mtl.runs`) turns a config into an `Experiment`; `mtl.train.loop.run` runs any
of them the same way. An Experiment is plain values and pure functions, so a composed run
(sequential phases, distillation, task affinity) builds one, replaces a field or wraps a
function, and runs the result:

    experiment = supervised.build(config)
    experiment = dataclasses.replace(experiment, train_step=with_something(experiment.train_step))
    result = run(experiment, workdir)          # result.state, result.metrics, result.stopped
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import ml_collections
from jax.sharding import Mesh, NamedSharding

from mtl.errors import ConfigError
from mtl.logs import MetricsWriter
from mtl.train.state import TrainState

PyTree = Any
Metrics = Mapping[str, Any]


class BatchSource(Protocol):
    """Training batches by step: batch `s` depends only on `(seed, s)`.

    `batch_size` is the global batch (rows over all processes); `__call__(step, rows)` gives
    this process's `rows` of batch `step` as host arrays, reading no other process's rows
    where the source can avoid it.
    """

    batch_size: int

    def __call__(self, step: int, rows: slice) -> PyTree: ...


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What an evaluator may use: where to write, the step, the run's mesh and shardings."""

    workdir: str
    step: int
    writer: MetricsWriter
    mesh: Mesh
    state_sharding: PyTree
    data_sharding: NamedSharding
    first_step: int = 0  # where this process run started (resumed) training
    final: bool = False  # the end of training, not a periodic call
    train_seconds: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds since the run started (building, restoring, training, evaluating)."""
        return time.perf_counter() - self.started


# (state, context) -> values to report (floats during training: shown on the progress line).
EvalFn = Callable[[TrainState, EvalContext], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A named evaluation on a schedule: every `every` steps (at log time) while training,
    and at the end when `final`. It writes its own records and files."""

    name: str
    fn: EvalFn
    every: int = 0
    final: bool = True

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything the loop needs to train, save, resume and evaluate one run.

    - `init() -> TrainState`: pure, jitted with the state's shardings; `fresh_start(state,
      workdir)`, if set, maps that state on the host before step 0 of a new run (e.g. a
      pretrained trunk), never on resume.
    - `train_step(state, batch) -> (state, metrics)`: pure, jitted and donated.
    - `batches`: the `BatchSource` of training batches.
    - `guarded`: config fields that define what the checkpoints hold (a resume under other
      values is refused); `loss_names` name the non-finite flags of `TrainState.nonfinite`.
    - `progress`: progress-line label -> train metric key.
    """

    config: ml_collections.ConfigDict
    init: Callable[[], TrainState]
    train_step: Callable[[TrainState, PyTree], tuple[TrainState, Metrics]]
    batches: BatchSource
    mesh: Mesh
    guarded: tuple[str, ...]
    loss_names: tuple[str, ...]
    progress: Mapping[str, str]
    evaluators: tuple[Evaluator, ...] = ()
    rules: tuple[Any, ...] = ()
    fresh_start: Callable[[TrainState, str], TrainState] | None = None
    loss_noun: str = "task(s)"  # "Non-finite loss of <noun> <loss names>"
    nonfinite_hint: str = (
        "Try a lower learning rate or gradient clipping (--config.optimizer.grad_clip_norm)."
    )

    def add_evaluators(self, *evaluators: Evaluator) -> Experiment:
        return dataclasses.replace(self, evaluators=(*self.evaluators, *evaluators))

    def scheduled(self) -> Experiment:
        """The evaluators on the schedules `config.evals.<name>.every` sets (as big_vision's
        `evals`): e.g. `--config.evals.test.every=500` scores the test set every 500 steps as
        well as at the end. A name no evaluator of this run has is a `ConfigError`."""
        evals = self.config.get("evals") or {}
        names = [e.name for e in self.evaluators]
        unknown = sorted(set(evals) - set(names))
        if unknown:
            raise ConfigError(
                f"config.evals names evaluator(s) {', '.join(unknown)} that this run does not "
                f"have; its evaluators: {', '.join(names) or 'none'}."
            )
        return dataclasses.replace(
            self,
            evaluators=tuple(
                dataclasses.replace(e, every=int(evals[e.name].get("every", e.every)))
                if e.name in evals
                else e
                for e in self.evaluators
            ),
        )


@dataclasses.dataclass(frozen=True)
class Result:
    """What `run` ends with: the final state (None if stopped before any step), each final
    evaluator's values by name, whether a stop was requested, and the training seconds."""

    state: TrainState | None
    metrics: dict[str, Any]
    stopped: bool
    seconds: float

    def __getitem__(self, evaluator: str) -> Any:
        return self.metrics[evaluator]
