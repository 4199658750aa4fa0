"""The run engine: a typed `TrainState`, an `Experiment` and the one loop that runs it.

    from mtl.train import run
    result = run(experiment, workdir)   # Result(state, metrics, stopped, seconds)

The kinds of run that build Experiments from configs are in `mtl.runs`.
"""

from mtl.train.experiment import BatchSource, EvalContext, Evaluator, Experiment, Result
from mtl.train.loop import run
from mtl.train.state import TrainState

__all__ = [
    "BatchSource",
    "EvalContext",
    "Evaluator",
    "Experiment",
    "Result",
    "TrainState",
    "run",
]
