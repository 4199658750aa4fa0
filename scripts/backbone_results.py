"""conv4 against ResNet-12 on the Omniglot meta-learning protocol, ProtoNets and MAML.

    .venv/bin/python -m scripts.backbone_results --root=/work/runs/backbones \
        --omniglot_dir=../shared/data/omniglot --readme=docs/models.md

- ProtoNets (`configs/omniglot_protonets.py`: trained on 20-way 1-shot episodes), scored on
  5- and 20-way, 1- and 5-shot meta-test episodes;
- MAML (`configs/omniglot_maml.py`, `--maml_variants`: by default first order, as a ResNet-12's
  second-order meta-gradient is the costly part on a CPU, and with a head zeroed per episode,
  so that the model trained on 5-way 1-shot episodes is scored on 5- and 20-way, 1- and 5-shot
  meta-test episodes too), scored after 10 inner steps. The ResNet-12's inner rate is
  `--resnet12_inner_lr` (conv4 keeps the config's 2.0, with which the ResNet-12's query loss
  starts in the tens).

Each method trains the same number of steps on both trunks (`--protonets_steps`,
`--maml_steps`); `--resnet12_channels` sets the ResNet-12's stage widths (the paper's
64,160,320,640 costs about 30 s per ProtoNets meta-step on two CPU cores: use a GPU for it).
Finished runs are reused; the table is printed and, with --readme, written between the
markers of that page.
"""

from __future__ import annotations

import os

from absl import flags, logging

from mtl import entry
from scripts.finished_runs import timed_summary
from scripts.readme import write_between


def markers(method: str) -> tuple[str, str]:
    """Each method's table has its own block, so one method can be rerun alone."""
    return f"<!-- backbone-results-{method}:begin -->", f"<!-- backbone-results-{method}:end -->"


_ROOT = flags.DEFINE_string("root", "/tmp/backbones", "Folder for the runs.")
_OMNIGLOT = flags.DEFINE_string("omniglot_dir", "../shared/data/omniglot", "Omniglot zips.")
_PROTO_STEPS = flags.DEFINE_integer("protonets_steps", 4000, "ProtoNets meta-steps.")
_MAML_STEPS = flags.DEFINE_integer("maml_steps", 60000, "MAML meta-steps.")
_MAML_VARIANTS = flags.DEFINE_string(
    "maml_variants", "fomaml,zerohead", "configs/omniglot_maml.py args."
)
_RESNET12_INNER_LR = flags.DEFINE_float("resnet12_inner_lr", 0.4, "MAML inner rate, ResNet-12.")
_MAML_EPISODES = flags.DEFINE_integer("maml_episodes", 600, "MAML meta-test episodes per setting.")
_MAML_EVAL_BATCH = flags.DEFINE_integer(
    "maml_eval_batch", 10, "MAML meta-test episodes per compiled call, ResNet-12."
)
_CHANNELS = flags.DEFINE_list(
    "resnet12_channels", ["64", "160", "320", "640"], "ResNet-12 stage widths."
)
_EPISODES = flags.DEFINE_integer("episodes", 600, "Meta-test episodes per setting.")
_METHODS = flags.DEFINE_list("methods", ["protonets", "maml"], "Methods to run.")
_README = flags.DEFINE_string("readme", "", "Page to write the table into (between markers).")

TRUNKS = ("conv4", "resnet12")


def config_for(method: str, trunk: str):
    from configs import omniglot_maml, omniglot_protonets

    if method == "protonets":
        config = omniglot_protonets.get_config()
        config.num_steps = _PROTO_STEPS.value
        config.eval.update(ways=(5, 20), shots=(1, 5))
    else:
        config = omniglot_maml.get_config(_MAML_VARIANTS.value)
        config.num_steps = _MAML_STEPS.value
        if config.meta.head_init != "learned":  # any number of ways
            config.eval.update(ways=(5, 20), shots=(1, 5))
        if trunk == "resnet12":
            config.meta.inner_lr = _RESNET12_INNER_LR.value
    config.data.data_dir = _OMNIGLOT.value
    config.data.tfds_dir = os.path.join(_ROOT.value, "tfds")
    config.baseline.joint = False
    episodes = _EPISODES.value if method == "protonets" else _MAML_EPISODES.value
    config.eval.update(episodes=episodes, val_every=0)
    config.model.trunk = trunk
    if trunk == "resnet12":
        config.model.resnet12.channels = tuple(int(c) for c in _CHANNELS.value)
        # MAML's inner loop gives every episode its own weights (vmap): the matmul form.
        config.model.resnet12.conv = "matmul" if method == "maml" else "xla"
        if method == "maml":  # 40 episodes of per-episode ResNet-12 weights: ~20 GB on CPU
            config.eval.batch = min(config.eval.batch, _MAML_EVAL_BATCH.value)
    return config


def trained(method: str, trunk: str) -> dict:
    """One run's meta-test summary and wall time, trained unless already finished."""
    workdir = os.path.join(_ROOT.value, f"{method}_{trunk}")
    return timed_summary(workdir, config_for(method, trunk))


def table(results: dict[str, dict[str, dict]]) -> str:
    widths = ",".join(_CHANNELS.value)
    lines = [
        f"| method | setting | conv4 (64 filters) | ResNet-12 ({widths}) | wall (s) conv4 / "
        "ResNet-12 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, sides in results.items():
        walls = " / ".join(f"{sides[t]['wall_seconds']:.0f}" for t in TRUNKS)
        for setting in sides["conv4"]["metrics"]["test"]:
            cells = []
            for trunk in TRUNKS:
                curve = sides[trunk]["metrics"]["test"][setting]
                cells.append(f"{100 * curve['mean'][-1]:.1f} +- {100 * curve['ci95'][-1]:.1f}%")
            lines.append(f"| {method} | {setting} | {' | '.join(cells)} | {walls} |")
    return "\n".join(lines)


def main(argv):
    del argv
    os.makedirs(_ROOT.value, exist_ok=True)
    results = {}
    for method in _METHODS.value:
        results[method] = {trunk: trained(method, trunk) for trunk in TRUNKS}
        logging.info("%s:\n%s", method, table({method: results[method]}))
    budgets = {
        "protonets": f"ProtoNets {_PROTO_STEPS.value} meta-steps, {_EPISODES.value} meta-test "
        "episodes",
        "maml": f"MAML ({_MAML_VARIANTS.value}; inner rate 2.0 conv4, "
        f"{_RESNET12_INNER_LR.value} ResNet-12) {_MAML_STEPS.value} meta-steps, "
        f"{_MAML_EPISODES.value} meta-test episodes",
    }
    for method, sides in results.items():
        text = table({method: sides}) + f"\n\nBudgets: {budgets[method]}."
        print(text)
        if _README.value:
            write_between(_README.value, *markers(method), text)


if __name__ == "__main__":
    entry.run(main)
