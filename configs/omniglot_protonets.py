"""Prototypical networks on Omniglot (Snell et al. 2017), the metric-learning baseline.

    python -m launch.train --config=configs/omniglot_protonets.py \\
        --workdir=/tmp/omniglot_protonets --config.data.data_dir=../shared/data/omniglot

Trained on 20-way 1-shot episodes (the paper used 60-way: more ways in training help) and
scored on 5-way 1- and 5-shot episodes, batch norm on running statistics at test time. The
trunk is MAML's conv4 (strided convolutions, mean-pooled 64-d embedding) rather than the
paper's max-pooling one: on CPU the max-pooling trunk costs five times more per step
(stride-1 convolutions at full resolution).
"""

from configs import omniglot_maml
from mtl.meta import methods


def get_config():
    config = omniglot_maml.get_config()
    config.num_steps = 4000
    config.meta.update(method="protonets", ways=20, shots=1, queries=5, meta_batch=8)
    config.meta.update(methods.defaults("protonets"))  # bn_test="running"
    config.eval.update(ways=(5,), shots=(1, 5), inner_steps=0, val_every=500)
    config.checkpoint.every = 250
    return config
