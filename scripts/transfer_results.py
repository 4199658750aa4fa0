"""Transfer-learning results on Omniglot, each method against its plain baseline.

    .venv/bin/python -m scripts.transfer_results --data_dir=../shared/data/omniglot \
        --out=/tmp/transfer_results.md

Experiments (drawers 16-20 are the test set everywhere, as in Omniglot-alphabets):
  * EWC: an MLP learns task A (the characters of one alphabet), then task B (another
    alphabet, new head); accuracy on A after B without and with the EWC penalty.
  * Progressive nets: column 1 trained on A; a new column with laterals trained on B, against
    a fresh column on B and fine-tuning column 1 on B (which forgets A).
  * DANN: which alphabet is this (8-way)? Source: the images; target: the same alphabets as
    negatives (1 - x), unlabelled in training. Source-only against domain-adversarial.
  * Distillation: all 242 characters; teacher conv4, student a small MLP, trained on the labels
    only or on the teacher's softened outputs.
Every number printed comes from these runs; budgets are the flags below.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from mtl import entry
from mtl.data import omniglot
from mtl.models import build_model
from mtl.models import default_config as model_defaults
from mtl.models.functional import PureModule
from mtl.tasks import tasks_from_config
from mtl.train.transfer import accuracy, fit
from mtl.transfer import dann, distill, ewc, progressive

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Omniglot zips ($MTL_OMNIGLOT_DIR if unset).")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", None, "TFDS data dir.")
_STEPS = flags.DEFINE_integer("num_steps", 1500, "Train steps of every phase.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_TASK_A = flags.DEFINE_string("task_a", "Japanese_(katakana)", "First alphabet (EWC, PNN).")
_TASK_B = flags.DEFINE_string("task_b", "Sanskrit", "Second alphabet (EWC, PNN).")
_EWC = flags.DEFINE_list("ewc_strengths", ["0", "100", "1000", "10000"], "EWC lambdas.")
_ONLY = flags.DEFINE_list("only", ["ewc", "progressive", "dann", "distill"], "Experiments.")
_TARGET = flags.DEFINE_enum(
    "dann_target", "negative", ["negative", "noisy", "shifted"], "DANN's target domain."
)
_DANN_TRUNK = flags.DEFINE_enum("dann_trunk", "conv4", ["conv4", "mlp"], "DANN's trunk.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown tables to this file.")
_JSON = flags.DEFINE_string("json", None, "Also write the raw numbers to this file.")
# Tests import several of these scripts into one process, and their flags share names
# (root, steps...): let a later definition replace an earlier one instead of failing.
for _holder in (
    _DATA_DIR,
    _TFDS_DIR,
    _STEPS,
    _BATCH,
    _TASK_A,
    _TASK_B,
    _EWC,
    _ONLY,
    _TARGET,
    _DANN_TRUNK,
    _OUT,
    _JSON,
):
    flags.FLAGS[_holder.name].allow_override = True

HIDDEN = (256, 256)


def split(images: omniglot.OmniglotImages, keep: np.ndarray, labels: np.ndarray):
    """Train / test array datasets of the images in `keep` with `labels`, by drawer."""
    test = np.isin(images.drawer, (16, 17, 18, 19, 20))

    def subset(sel):
        sel = sel & keep
        return {"inputs": images.images[sel], "labels": labels[sel].astype(np.int32)}

    return subset(~test), subset(test)


def alphabet(images, name):
    index = images.alphabets.index(name)
    own = images.alphabet == index
    return split(images, own, images.character), int(images.character[own].max()) + 1


def mlp_model(tasks_config: dict, input_shape, hidden=HIDDEN, seed=0):
    """An engine multi-task model: mlp trunk, one classification head per task."""
    config = model_defaults()
    config.trunk = "mlp"
    config.mlp.hidden = tuple(hidden)
    tasks = tasks_from_config(tasks_config)
    model = build_model(config, tasks, input_shape, seed)
    return PureModule.split(model)


def cross_entropy(logits, labels):
    return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(labels.shape[0]), labels])


# --- EWC --------------------------------------------------------------------------------------


def run_ewc(images) -> dict:
    (a_train, a_test), n_a = alphabet(images, _TASK_A.value)
    (b_train, b_test), n_b = alphabet(images, _TASK_B.value)
    pure, params, state = mlp_model(
        {"A": dict(num_outputs=n_a), "B": dict(num_outputs=n_b)}, a_train["inputs"].shape[1:]
    )

    def logits(p, x, task):
        return pure.apply(p, state, x, train=False)[0][task]

    def task_loss(task, penalty=None):
        def loss(p, s, batch, i):
            value = cross_entropy(logits(p, batch["inputs"], task), batch["labels"])
            return (value if penalty is None else value + penalty(p)), s

        return loss

    fit_kw = dict(num_steps=_STEPS.value, batch_size=_BATCH.value)
    after_a, _, _ = fit(task_loss("A"), params, state, a_train, **fit_kw)
    acc_a_before = accuracy(lambda x: logits(after_a, x, "A"), a_test["inputs"], a_test["labels"])
    # Fisher of task A at its solution; the penalty covers the shared trunk (head A is not
    # touched by task B's loss, head B is new).
    trunk_logits = lambda t, x: logits({**after_a, "trunk": t}, x, "A")  # noqa: E731
    batches = [
        (jnp.asarray(a_train["inputs"][i : i + 256]), jnp.asarray(a_train["labels"][i : i + 256]))
        for i in range(0, len(a_train["inputs"]), 256)
    ]
    fisher = ewc.fisher_diagonal(trunk_logits, after_a["trunk"], batches, jax.random.key(0))
    rows = []
    for strength in map(float, _EWC.value):
        penalty = lambda p, lam=strength: ewc.ewc_penalty(  # noqa: E731
            p["trunk"], after_a["trunk"], fisher, lam
        )
        after_b, _, _ = fit(
            task_loss("B", penalty if strength else None), after_a, state, b_train, **fit_kw
        )
        rows.append(
            {
                "ewc_strength": strength,
                "acc_A_after_A": acc_a_before,
                "acc_A_after_B": accuracy(
                    lambda x, p=after_b: logits(p, x, "A"), a_test["inputs"], a_test["labels"]
                ),
                "acc_B": accuracy(
                    lambda x, p=after_b: logits(p, x, "B"), b_test["inputs"], b_test["labels"]
                ),
            }
        )
    return {"rows": rows}


# --- progressive nets -------------------------------------------------------------------------


def run_progressive(images) -> dict:
    (a_train, a_test), n_a = alphabet(images, _TASK_A.value)
    (b_train, b_test), n_b = alphabet(images, _TASK_B.value)
    sizes = (int(np.prod(a_train["inputs"].shape[1:])), *HIDDEN)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    fit_kw = dict(num_steps=_STEPS.value, batch_size=_BATCH.value)

    def column_loss(frozen):
        def loss(new, s, batch, i):
            out = progressive.new_column_logits(frozen, new, batch["inputs"])
            return cross_entropy(out, batch["labels"]), s

        return loss

    col1, _, _ = fit(
        column_loss([]), progressive.init_column(k1, sizes, n_a, 0), {}, a_train, **fit_kw
    )
    col1_copy = jax.tree.map(np.array, col1)
    col2, _, _ = fit(
        column_loss([col1]), progressive.init_column(k2, sizes, n_b, 1), {}, b_train, **fit_kw
    )
    fresh, _, _ = fit(
        column_loss([]), progressive.init_column(k3, sizes, n_b, 0), {}, b_train, **fit_kw
    )
    # Fine-tuning: column 1's layers go on to B with a new head; A is read with the old head.
    tuned = {"layers": col1["layers"], "head": progressive.init_column(k3, sizes, n_b, 0)["head"]}
    tuned, _, _ = fit(column_loss([]), tuned, {}, b_train, **fit_kw)
    identical = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(col1), jax.tree.leaves(col1_copy), strict=True)
    )

    def acc(fn, data):
        return accuracy(fn, data["inputs"], data["labels"])

    a_fn = lambda cols: lambda x: progressive.forward(cols, x)[0]  # noqa: E731
    return {
        "column1_bit_identical": identical,
        "acc_A_column1": acc(a_fn([col1]), a_test),
        "acc_A_after_B_progressive": acc(a_fn([col1, col2]), a_test),
        "acc_A_after_B_finetune": acc(
            a_fn([{"layers": tuned["layers"], "head": col1["head"]}]), a_test
        ),
        "acc_B_progressive": acc(lambda x: progressive.forward([col1, col2], x)[1], b_test),
        "acc_B_fresh_column": acc(a_fn([fresh]), b_test),
        "acc_B_finetune": acc(a_fn([tuned]), b_test),
    }


# --- DANN -------------------------------------------------------------------------------------


TARGETS = {
    "negative": "negatives (1 - x)",
    "noisy": "low contrast with noise (0.3 + 0.4 x + N(0, 0.2))",
    "shifted": "shifted 4 pixels right and down",
}


def to_target(data: dict, seed: int) -> dict:
    """The target domain of the DANN experiment: the same images, transformed."""
    x = data["inputs"]
    if _TARGET.value == "negative":
        x = 1.0 - x
    elif _TARGET.value == "noisy":
        noise = np.random.default_rng(seed).normal(0.0, 0.2, x.shape).astype(x.dtype)
        x = 0.3 + 0.4 * x + noise
    else:
        x = np.roll(x, (4, 4), axis=(1, 2))
    return {**data, "inputs": x}


def run_dann(images) -> dict:
    source_train, source_test = split(images, np.ones(len(images), bool), images.alphabet)
    target_train, target_test = to_target(source_train, 1), to_target(source_test, 2)
    num = len(images.alphabets)
    fit_kw = dict(num_steps=_STEPS.value, batch_size=_BATCH.value)
    config = model_defaults()
    config.trunk = _DANN_TRUNK.value
    config.conv4.filters = 32
    config.mlp.hidden = HIDDEN
    tasks = {"alphabet": dict(num_outputs=num), "domain": dict(num_outputs=1, head_hidden=(64,))}
    model = build_model(config, tasks_from_config(tasks), source_train["inputs"].shape[1:], 0)
    trunk_pure, trunk_params, trunk_state = PureModule.split(model.trunk)
    cls_pure, cls_params, _ = PureModule.split(model.heads["alphabet"])
    dom_pure, dom_params, _ = PureModule.split(model.heads["domain"])
    start = {"trunk": trunk_params, "alphabet": cls_params, "domain": dom_params}

    def classify(p, s, x):
        z, _ = trunk_pure.apply(p["trunk"], s, x, train=False)
        return cls_pure.apply(p["alphabet"], {}, z)[0]

    # Source and target examples side by side: a batch is half of each.
    paired = {
        "inputs": source_train["inputs"],
        "labels": source_train["labels"],
        # Shuffled, so a batch's target half is not its source half transformed.
        "target": target_train["inputs"][
            np.random.default_rng(0).permutation(len(target_train["inputs"]))
        ],
    }

    def loss_fn(adversarial):
        def loss(p, s, batch, i):
            n = batch["inputs"].shape[0]
            if not adversarial:
                z, s = trunk_pure.apply(p["trunk"], s, batch["inputs"], train=True)
                logits = cls_pure.apply(p["alphabet"], {}, z)[0]
                return cross_entropy(logits, batch["labels"]), s
            # One trunk pass over source and target (as Ganin et al.; batch norm sees both).
            x = jnp.concatenate([batch["inputs"], batch["target"]])
            z, s = trunk_pure.apply(p["trunk"], s, x, train=True)
            logits = cls_pure.apply(p["alphabet"], {}, z[:n])[0]
            scale = dann.ganin_lambda(i / _STEPS.value)
            dom = dom_pure.apply(p["domain"], {}, dann.gradient_reversal(z, scale))[0]
            is_target = jnp.concatenate([jnp.zeros(n), jnp.ones(n)])
            return cross_entropy(logits, batch["labels"]) + dann.domain_loss(dom, is_target), s

        return loss

    results = {}
    for name, adversarial in (("source_only", False), ("dann", True)):
        p, s, _ = fit(loss_fn(adversarial), start, trunk_state, paired, **fit_kw)
        results[name] = {
            split_name: accuracy(
                lambda x, p=p, s=s: classify(p, s, x), data["inputs"], data["labels"]
            )
            for split_name, data in (("source_test", source_test), ("target_test", target_test))
        }
    return results


# --- distillation -----------------------------------------------------------------------------


def run_distill(images, temperature=4.0, alpha=0.9) -> dict:
    train, test = split(images, np.ones(len(images), bool), images.class_ids())
    num = int(images.class_ids().max()) + 1
    fit_kw = dict(num_steps=_STEPS.value, batch_size=_BATCH.value)
    tasks = {"character": dict(num_outputs=num)}
    teacher_cfg = model_defaults()
    teacher_cfg.trunk = "conv4"
    teacher_cfg.conv4.filters = 32
    t_pure, t_params, t_state = PureModule.split(
        build_model(teacher_cfg, tasks_from_config(tasks), train["inputs"].shape[1:], 0)
    )
    (task,) = tasks_from_config(tasks)

    def teacher_loss(p, s, batch, i):
        out, s = t_pure.apply(p, s, batch["inputs"], train=True)
        return cross_entropy(out["character"], batch["labels"]), s

    t_params, t_state, _ = fit(teacher_loss, t_params, t_state, train, **fit_kw)
    teacher_logits = lambda x: t_pure.apply(t_params, t_state, x, train=False)[0]["character"]  # noqa: E731
    s_pure, s_params, s_state = mlp_model(tasks, train["inputs"].shape[1:], hidden=(128,), seed=1)
    student_logits = lambda p, x: s_pure.apply(p, s_state, x, train=False)[0]["character"]  # noqa: E731

    def student_loss(kd):
        def loss(p, s, batch, i):
            out = student_logits(p, batch["inputs"])
            if not kd:
                return cross_entropy(out, batch["labels"]), s
            mask = jnp.ones(batch["labels"].shape[0], bool)
            return distill.distillation_loss(
                task,
                out,
                teacher_logits(batch["inputs"]),
                batch["labels"],
                mask,
                temperature,
                alpha,
            ), s

        return loss

    result = {
        "teacher": accuracy(teacher_logits, test["inputs"], test["labels"]),
        "temperature": temperature,
        "alpha": alpha,
    }
    for name, kd in (("student_labels_only", False), ("student_distilled", True)):
        trained, _, _ = fit(student_loss(kd), s_params, s_state, train, **fit_kw)
        result[name] = accuracy(
            lambda x, p=trained: student_logits(p, x), test["inputs"], test["labels"]
        )
    return result


# --- tables -----------------------------------------------------------------------------------


def tables(results: dict) -> str:
    budget = f"{_STEPS.value} Adam steps (lr 1e-3) per phase, batch {_BATCH.value}"
    out = []
    if "ewc" in results:
        out += [
            f"EWC: task A = {_TASK_A.value}, then task B = {_TASK_B.value}; MLP {HIDDEN}; "
            f"{budget}; Fisher of A on the shared trunk (labels sampled from the model).",
            "",
            "| EWC lambda | acc. A after A | acc. A after B | acc. B |",
            "| --- | --- | --- | --- |",
        ]
        for r in results["ewc"]["rows"]:
            out.append(
                f"| {r['ewc_strength']:g} | {r['acc_A_after_A']:.3f} | "
                f"{r['acc_A_after_B']:.3f} | {r['acc_B']:.3f} |"
            )
        out.append("")
    if "progressive" in results:
        p = results["progressive"]
        out += [
            f"Progressive nets: A = {_TASK_A.value}, B = {_TASK_B.value}; columns MLP {HIDDEN}; "
            f"{budget}. Column 1 bit-identical after training column 2: "
            f"{p['column1_bit_identical']}.",
            "",
            "| setting | acc. A after B | acc. B |",
            "| --- | --- | --- |",
            f"| progressive (column 2 with laterals) | {p['acc_A_after_B_progressive']:.3f} | "
            f"{p['acc_B_progressive']:.3f} |",
            f"| fresh column on B | {p['acc_A_column1']:.3f} (column 1 kept) | "
            f"{p['acc_B_fresh_column']:.3f} |",
            f"| fine-tune column 1 on B | {p['acc_A_after_B_finetune']:.3f} | "
            f"{p['acc_B_finetune']:.3f} |",
            "",
        ]
    if "dann" in results:
        d = results["dann"]
        out += [
            "DANN: 8-way alphabet classification; source = images, target = "
            f"{TARGETS[_TARGET.value]}, unlabelled; trunk {_DANN_TRUNK.value}, "
            "domain head 64 hidden, "
            f"GRL with Ganin's schedule; {budget}.",
            "",
            "| training | source test acc. | target test acc. |",
            "| --- | --- | --- |",
            f"| source only | {d['source_only']['source_test']:.3f} | "
            f"{d['source_only']['target_test']:.3f} |",
            f"| DANN | {d['dann']['source_test']:.3f} | {d['dann']['target_test']:.3f} |",
            "",
        ]
    if "distill" in results:
        k = results["distill"]
        out += [
            f"Distillation: 242 characters; teacher conv4 (32 filters), student MLP (128,); "
            f"T = {k['temperature']:g}, alpha = {k['alpha']:g}; {budget}.",
            "",
            "| model | test acc. |",
            "| --- | --- |",
            f"| teacher conv4 | {k['teacher']:.3f} |",
            f"| student, labels only | {k['student_labels_only']:.3f} |",
            f"| student, distilled | {k['student_distilled']:.3f} |",
            "",
        ]
    return "\n".join(out)


def main(argv):
    del argv
    images = omniglot.load_omniglot(
        omniglot.resolve_data_dir(_DATA_DIR.value), tfds_dir=_TFDS_DIR.value
    )
    runs = {
        "ewc": run_ewc,
        "progressive": run_progressive,
        "dann": run_dann,
        "distill": run_distill,
    }
    results = {}
    for name in _ONLY.value:
        start = time.time()
        results[name] = runs[name](images)
        results[name + "_seconds"] = time.time() - start
        print(f"{name}: {time.time() - start:.0f}s", flush=True)
    text = tables(results)
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text + "\n")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    entry.run(main)
