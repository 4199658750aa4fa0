"""Knowledge distillation as a multi-task run (`trainer="distill"`).

The student is the model of the config; the teacher is the final checkpoint of another run,
named by `config.teacher.workdir`, rebuilt from that run's `config.json` (with its LoRA
factors if it trained some). The two may have any trunks (a conv4 teacher for an MLP student,
a fine-tuned MiniLM for a smaller BERT) but must share the classification tasks, and text
students must tokenise as their teacher did. A config with a `finetune` section (text, or any
pretrained trunk) trains the student with the supervised run's fine-tuning stage (its init
checkpoint and strategy).

Each train step runs the teacher (evaluation mode, no gradient) on the batch and trains the
student on `mtl.transfer.distill.distillation_loss` (`config.distill.temperature`,
`config.distill.alpha`), combined over tasks by the configured weighting. The teacher's
variables live in the train state's `extras["teacher"]` (no optimizer state), so a stopped run
resumes with the same command. Evaluation reads the student alone.

    python -m launch.train --config=configs/omniglot_distill.py --workdir=/tmp/student \
        --config.teacher.workdir=/tmp/teacher --config.data.data_dir=../shared/data/omniglot
    python -m launch.train --config=configs/senteval_distill.py:sst2 --workdir=/tmp/student \
        --config.teacher.workdir=/tmp/ft_sst2 --config.data.data_dir=../shared/data/senteval
"""

from __future__ import annotations

import os

import jax
import ml_collections

from mtl import checkpoint, workdir_files
from mtl.data import arrays, text
from mtl.errors import ConfigError
from mtl.models.functional import PureModule
from mtl.runs import supervised
from mtl.runs.supervised_step import Steps
from mtl.tasks import tasks_from_config
from mtl.train.experiment import Result
from mtl.train.loop import run
from mtl.train.state import TrainState
from mtl.transfer import distill


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(temperature=4.0, alpha=0.9))


def check_tokenizer(workdir: str, teacher_config, tokenizer_dir: str | None) -> None:
    """`ConfigError` unless a text student tokenises with its teacher's tokenizer: the teacher's
    logits are only meaningful for the token ids it was trained on."""
    teacher_tokenizer = (teacher_config.get("data") or {}).get("tokenizer_dir")
    if not (tokenizer_dir or teacher_tokenizer):
        return  # not text
    if not (tokenizer_dir and teacher_tokenizer):
        raise ConfigError(
            f"Only one of the student and the teacher in {workdir} reads text "
            f"(data.tokenizer_dir {tokenizer_dir!r} against {teacher_tokenizer!r})."
        )
    kept = os.path.join(workdir, "tokenizer")  # the teacher's copy, kept in its workdir
    if not text.same_tokenizer(tokenizer_dir, kept if os.path.isdir(kept) else teacher_tokenizer):
        raise ConfigError(
            f"The student's tokenizer ({tokenizer_dir}) is not the teacher's ({workdir}): set "
            "--config.data.tokenizer_dir to the teacher's workdir (or leave it unset) so both "
            "see the same token ids."
        )


def load_teacher(workdir: str, input_shape, student_tasks, tokenizer_dir: str | None = None):
    """`(apply, variables)`: `apply(variables, inputs) -> {task: logits}` of the teacher run."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(
            f"config.teacher.workdir={workdir!r} has no config.json: point it at the workdir "
            "of a finished run (python -m launch.train ... --workdir=<teacher>)."
        )
    teacher_config = ml_collections.ConfigDict(
        workdir_files.read_json(path, fix=workdir_files.CONFIG_FIX)
    )
    if not {"model", "tasks", "seed"} <= set(teacher_config):
        raise ConfigError(
            f"{path} is not the config of a training run (it lacks model, tasks or seed): point "
            "config.teacher.workdir at the workdir of a finished run."
        )
    tasks = tasks_from_config(teacher_config.tasks)
    names = {t.name for t in tasks}
    missing = [t.name for t in student_tasks if t.name not in names]
    if missing:
        raise ConfigError(
            f"The teacher in {workdir} has no task(s) {', '.join(missing)}; its tasks are "
            f"{', '.join(sorted(names))}. Distil only tasks the teacher was trained on."
        )
    bad = [t.name for t in student_tasks if t.head != "classification"]
    if bad:
        raise ConfigError(f"Distillation needs classification tasks; {', '.join(bad)} are not.")
    check_tokenizer(workdir, teacher_config, tokenizer_dir)
    model = supervised.model(teacher_config, tasks, input_shape)  # with its LoRA factors
    trunk, _, _ = PureModule.split(model.trunk)
    heads = {name: PureModule.split(head)[0] for name, head in model.heads.items()}
    state = checkpoint.final_state(workdir)
    variables = {"params": state["params"], "model_state": state["model_state"]}

    def apply(variables, inputs):
        z, _ = trunk.apply(
            variables["params"]["trunk"], variables["model_state"]["trunk"], inputs, train=False
        )
        return {
            t.name: heads[t.name].apply(variables["params"]["heads"][t.name], {}, z)[0]
            for t in student_tasks
        }

    return apply, variables


def with_teacher(steps: Steps, apply, variables) -> Steps:
    """`steps` whose state carries the teacher (`extras["teacher"]`) and whose training
    batches get its outputs."""

    def init() -> TrainState:
        return steps.init().with_extras(teacher=variables)

    def train_step(state: TrainState, batch):
        outputs = jax.lax.stop_gradient(apply(state.extras["teacher"], batch["inputs"]))
        return steps.train_step(state, {**batch, "teacher": outputs})

    return Steps(init, train_step, steps.eval_step, steps.objective)


def distill_loss_fn(temperature: float, alpha: float):
    """`task_loss` for `make_steps`: the distillation loss when the batch has the teacher's
    outputs (training), the task's own loss otherwise (evaluation)."""

    def task_loss(task, outputs, batch):
        labels, mask = batch["labels"][task.label], batch["masks"][task.label]
        if "teacher" not in batch:
            return task.loss_fn(outputs, labels, mask)
        teacher = batch["teacher"][task.name]
        return distill.distillation_loss(task, outputs, teacher, labels, mask, temperature, alpha)

    return task_loss


def train(config: ml_collections.ConfigDict, workdir: str) -> Result:
    """The student's supervised run of `config` with the teacher of `config.teacher.workdir`."""
    teacher_dir = (config.get("teacher") or {}).get("workdir")
    if not teacher_dir:
        raise ConfigError("trainer=distill needs --config.teacher.workdir=<a finished run>.")
    options = config.get("distill") or default_config()
    temperature, alpha = float(options.temperature), float(options.alpha)
    distill.check_options(temperature, alpha)
    supervised.require_mixed(config)
    text.default_tokenizer_dir(config.data, teacher_dir)  # a text student reads as its teacher
    tasks, _, _ = supervised.check(config)
    # Loaded once here (the teacher is built for its input shape) and handed to the run.
    data = supervised.load_data(config, tasks)
    apply, variables = load_teacher(
        teacher_dir, arrays.input_shape(data.train), tasks, config.data.get("tokenizer_dir")
    )
    parts = supervised.parts(config, data=data)
    steps = with_teacher(parts.steps(distill_loss_fn(temperature, alpha)), apply, variables)
    return run(supervised.experiment(parts, steps), workdir)
