"""Distil a finished Omniglot-alphabets run (the teacher) into a small MLP student.

    python -m launch.train --config=configs/omniglot_mtl.py --workdir=/tmp/teacher \
        --config.data.data_dir=../shared/data/omniglot
    python -m launch.train --config=configs/omniglot_distill.py --workdir=/tmp/student \
        --config.teacher.workdir=/tmp/teacher --config.data.data_dir=../shared/data/omniglot

`--config.distill.alpha=0` trains the same student on the labels only (the baseline).
"""

import ml_collections

from configs import omniglot_mtl
from mtl.runs.distillation import default_config as distill_config


def get_config(alphabets: str = ""):
    config = omniglot_mtl.get_config(alphabets)
    config.trainer = "distill"
    config.model.trunk = "mlp"
    config.model.mlp.hidden = (128,)
    config.teacher = ml_collections.ConfigDict(
        dict(workdir=ml_collections.FieldReference(None, field_type=str))
    )
    config.distill = distill_config()
    return config
