"""Omniglot as a single-input multi-task problem: every image is labelled for three tasks,
"alphabet" (which alphabet), "character" (which character of all alphabets) and "rotation"
(every image is rotated by a seeded multiple of 90 degrees, and the task names it). The
tasks read the same inputs, so every example carries every label (the `mixed` layout).

    python -m launch.train --config=configs/omniglot_single_input.py --workdir=/tmp/single \
        --config.data.data_dir=../shared/data/omniglot --config.weighting.name=upgrad

Rotation pulls the features towards orientation, character and alphabet recognition towards
the shapes seen upright: the tasks help and hinder each other, which is what the weighting
methods and architectures are compared on (`scripts/single_input_results.py`).
"""

import ml_collections

from configs import omniglot_mtl, omniglot_pooled

TASKS = ("alphabet", "character", "rotation")


def get_config() -> ml_collections.ConfigDict:
    config = omniglot_mtl.get_config()
    classes = {**omniglot_pooled.CLASSES, "rotation": 4}
    config.tasks = ml_collections.ConfigDict(
        {name: omniglot_pooled.classification(classes[name], name) for name in TASKS}
    )
    config.data.pooled_tasks = ("alphabet", "character")
    config.data.rotate_every_image = True
    return config
