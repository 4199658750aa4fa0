"""Omniglot alphabets with the lookahead inter-task affinity measured during the run.

    python -m launch.train --config=configs/omniglot_affinity.py --workdir=/tmp/affinity \
        --config.data.data_dir=../shared/data/omniglot

Writes `<workdir>/affinity/affinity.png` (heatmap), `affinity.json` (matrix, suggested groups).
"""

from configs import omniglot_mtl
from mtl.runs.task_affinity import default_config as affinity_config


def get_config(alphabets: str = ""):
    config = omniglot_mtl.get_config(alphabets)
    config.trainer = "affinity"
    config.affinity = affinity_config()
    return config
