"""conv4 against ResNet-12 on the Omniglot meta-learning protocol: ProtoNets, MAML and the
newer meta-learners (iMAML, R2D2, BOIL).

    .venv/bin/python -m scripts.backbone_results --root=/work/runs/backbones \
        --omniglot_dir=../shared/data/omniglot --readme=docs/models.md

- ProtoNets (`configs/omniglot_protonets.py`: trained on 20-way 1-shot episodes), scored on
  5- and 20-way, 1- and 5-shot meta-test episodes;
- MAML (`configs/omniglot_maml.py`, `--maml_variants`: by default first order, as a ResNet-12's
  second-order meta-gradient is the costly part on a CPU, and with a head zeroed per episode,
  so that the model trained on 5-way 1-shot episodes is scored on 5- and 20-way, 1- and 5-shot
  meta-test episodes too), scored after 10 inner steps. The ResNet-12's inner rate is
  `--resnet12_inner_lr` (conv4 keeps the config's 2.0, with which the ResNet-12's query loss
  starts in the tens);
- iMAML, R2D2 and BOIL (`NEW_LEARNERS`: the MAML config's 5-way 1-shot episodes with the
  method's options): iMAML and R2D2 build their heads per episode and are scored on every
  setting, BOIL's meta-learned 5-way head on the 5-way ones.

Each method trains the same number of steps on both trunks (`--protonets_steps`,
`--maml_steps`); `--resnet12_channels` sets the ResNet-12's stage widths (the paper's
64,160,320,640 costs about 30 s per ProtoNets meta-step on two CPU cores: use a GPU for it).
Finished runs are reused; the table is printed and, with --readme, written between the
markers of that page (`backbone-results-METHOD`, or `--marker` for one block of every method).
"""

from __future__ import annotations

import os
import re

from absl import flags, logging

from mtl import entry
from scripts.finished_runs import timed_summary
from scripts.readme import write_block

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
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 0, "Save every N meta-steps (0: the config's), so a long run resumes."
)
_METHODS = flags.DEFINE_list("methods", ["protonets", "maml"], "Methods to run.")
_TRUNKS = flags.DEFINE_list("trunks", ["conv4", "resnet12"], "Trunks, one column each.")
_README = flags.DEFINE_string("readme", "", "Page to write the table into (between markers).")
_MARKER = flags.DEFINE_string("marker", "", "One block for all methods (default: one each).")

TRUNK_NAMES = {"conv4": "conv4 (64 filters)", "resnet12": "ResNet-12 ({})"}
# config.meta of the newer meta-learners, on configs/omniglot_maml.py's episodes.
NEW_LEARNERS = {
    # 5 inner steps and 5 CG steps cost about ten of MAML's one-step episodes: 8 per batch.
    "imaml": dict(
        method="imaml", head_init="zero", inner_lr=0.5, inner_steps=5, cg_steps=5, meta_batch=8
    ),
    "r2d2": dict(method="r2d2"),
    "boil": dict(method="maml", adapt="body", head_init="learned", inner_lr=0.5),
}


def budget(method: str) -> str:
    if method == "protonets":
        return f"ProtoNets {_PROTO_STEPS.value} meta-steps, {_EPISODES.value} meta-test episodes"
    options = _MAML_VARIANTS.value + "".join(
        f", {k}={v}" for k, v in NEW_LEARNERS.get(method, {}).items()
    )
    rates = (
        ""
        if method in NEW_LEARNERS
        else f"; inner rate 2.0 conv4, {_RESNET12_INNER_LR.value} ResNet-12"
    )
    return (
        f"{method} ({options}{rates}) {_MAML_STEPS.value} meta-steps, "
        f"{_MAML_EPISODES.value} meta-test episodes"
    )


def config_for(method: str, trunk: str):
    from configs import omniglot_maml, omniglot_protonets
    from mtl.meta import methods

    if method == "protonets":
        config = omniglot_protonets.get_config()
        config.num_steps = _PROTO_STEPS.value
        config.eval.update(ways=(5, 20), shots=(1, 5))
    else:
        config = omniglot_maml.get_config(_MAML_VARIANTS.value)
        config.num_steps = _MAML_STEPS.value
        config.meta.update(NEW_LEARNERS.get(method, {}))
        if methods.head_per_episode(config.meta):  # any number of ways
            config.eval.update(ways=(5, 20), shots=(1, 5))
        else:
            config.eval.update(shots=(1, 5))
        if trunk == "resnet12" and method == "maml":
            config.meta.inner_lr = _RESNET12_INNER_LR.value
    config.data.data_dir = _OMNIGLOT.value
    config.data.tfds_dir = os.path.join(_ROOT.value, "tfds")
    config.baseline.joint = False
    episodes = _EPISODES.value if method == "protonets" else _MAML_EPISODES.value
    config.eval.update(episodes=episodes, val_every=0)
    if _CHECKPOINT_EVERY.value > 0:
        config.checkpoint.every = _CHECKPOINT_EVERY.value
    config.model.trunk = trunk
    if trunk == "resnet12":
        config.model.resnet12.channels = tuple(int(c) for c in _CHANNELS.value)
        # MAML's inner loop gives every episode its own weights (vmap): the matmul form.
        config.model.resnet12.conv = "xla" if method == "protonets" else "matmul"
        if method != "protonets":  # 40 episodes of per-episode ResNet-12 weights: ~20 GB on CPU
            config.eval.batch = min(config.eval.batch, _MAML_EVAL_BATCH.value)
    return config


def trained(method: str, trunk: str) -> dict:
    """One run's meta-test summary and wall time, trained unless already finished."""
    workdir = os.path.join(_ROOT.value, f"{method}_{trunk}")
    return timed_summary(workdir, config_for(method, trunk))


def table(results: dict[str, dict[str, dict]]) -> str:
    """One row per method and meta-test setting, one column per trunk ('-': not scored)."""
    trunks = _TRUNKS.value
    names = [TRUNK_NAMES[t].format(",".join(_CHANNELS.value)) for t in trunks]
    lines = [
        f"| method | setting | {' | '.join(names)} | wall (s) {' / '.join(trunks)} |",
        "| --- | --- |" + " --- |" * (len(trunks) + 1),
    ]
    for method, sides in results.items():
        walls = " / ".join(f"{sides[t]['wall_seconds']:.0f}" for t in trunks)
        settings = dict.fromkeys(s for t in trunks for s in sides[t]["metrics"]["test"])
        for setting in sorted(settings, key=lambda s: tuple(map(int, re.findall(r"\d+", s)))):
            cells = []
            for trunk in trunks:
                curve = sides[trunk]["metrics"]["test"].get(setting)
                if curve is None:  # e.g. 20-way for a head meta-learned with 5 outputs
                    cells.append("-")
                    continue
                cells.append(f"{100 * curve['mean'][-1]:.1f} +- {100 * curve['ci95'][-1]:.1f}%")
            lines.append(f"| {method} | {setting} | {' | '.join(cells)} | {walls} |")
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = sorted(set(_METHODS.value) - {"protonets", "maml", *NEW_LEARNERS})
    if unknown:
        raise SystemExit(
            f"Unknown --methods {unknown}: protonets, maml, {', '.join(NEW_LEARNERS)}."
        )
    os.makedirs(_ROOT.value, exist_ok=True)
    results = {}
    for method in _METHODS.value:
        results[method] = {trunk: trained(method, trunk) for trunk in _TRUNKS.value}
        logging.info("%s:\n%s", method, table({method: results[method]}))
    # A method's own block (so one method can be rerun alone), or the --marker block.
    blocks = (
        [(_MARKER.value, results)]
        if _MARKER.value
        else [(f"backbone-results-{m}", {m: r}) for m, r in results.items()]
    )
    for name, chosen in blocks:
        text = table(chosen) + f"\n\nBudgets: {'; '.join(budget(m) for m in chosen)}."
        print(text)
        if _README.value:
            write_block(_README.value, name, text)


if __name__ == "__main__":
    entry.run(main)
