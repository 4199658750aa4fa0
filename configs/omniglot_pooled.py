"""Omniglot with one task over all alphabets: "character" (which of the 242 characters of the
two small zips) or "alphabet" (which of the 8 alphabets), from the data source's
`pooled_tasks` option.

    python -m launch.train --config=configs/omniglot_pooled.py:character --workdir=/tmp/chars \
        --config.data.data_dir=../shared/data/omniglot

`use_pooled_task(config, name)` turns any Omniglot config (a distillation student, a DANN run)
into one on that task.
"""

import ml_collections

from configs import omniglot_mtl

# task -> number of classes over the alphabets of the two small zips
CLASSES = {
    "alphabet": len(omniglot_mtl.ALPHABETS),
    "character": sum(omniglot_mtl.ALPHABETS.values()),
}


def classification(num_classes: int, label: str) -> dict:
    """A classification task reading label field `label`, scored by accuracy."""
    return dict(
        head="classification",
        num_outputs=num_classes,
        loss="softmax_cross_entropy",
        metrics=("accuracy",),
        label=label,
    )


def use_pooled_task(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """`config` with the one task `name` ("alphabet" or "character") in place of its tasks."""
    if name not in CLASSES:
        from mtl.errors import unknown_name

        raise unknown_name("pooled task", name, CLASSES, field="--config=...:TASK")
    config.tasks = ml_collections.ConfigDict({name: classification(CLASSES[name], name)})
    config.data.pooled_tasks = (name,)
    return config


def get_config(task: str = "character") -> ml_collections.ConfigDict:
    return use_pooled_task(omniglot_mtl.get_config(), task)
