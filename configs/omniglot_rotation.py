"""Omniglot alphabets plus self-supervised rotation prediction as a ninth task.

Every training image also appears rotated by 90, 180 or 270 degrees, labelled only for the
`rotation` task (4-way); see `mtl.data.rotation`.

    python -m launch.train --config=configs/omniglot_rotation.py --workdir=/tmp/rotation \
        --config.data.data_dir=../shared/data/omniglot
"""

from configs import omniglot_mtl


def get_config(alphabets: str = ""):
    config = omniglot_mtl.get_config(alphabets)
    config.data.rotation = True
    config.tasks.rotation = dict(
        head="classification",
        num_outputs=4,
        loss="softmax_cross_entropy",
        metrics=("accuracy",),
        label="rotation",
    )
    return config
