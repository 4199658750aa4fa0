"""MAML on the sinusoid regression tasks of its paper, and the paper's comparison.

    python -m launch.train --config=configs/sinusoid_maml.py --workdir=/tmp/sinusoid_maml

A 2x40 ReLU MLP, inner lr 0.01, one inner step, meta-batch 25, Adam 1e-3 (Finn et al. 2017,
section 5.1). After meta-training, MAML and a model pretrained on all tasks jointly are both
fine-tuned on K = 5 and K = 10 points of 600 new tasks; the test MSE after each of 10 inner
steps goes to results.json and adaptation.png. No data to download.
"""

from configs.meta_common import base_config, eval_block, meta_block


def get_config():
    config = base_config()
    config.num_steps = 15000
    config.log_every = 1000
    config.data = dict(name="sinusoid")
    config.model.trunk = "mlp"
    config.model.mlp.hidden = (40, 40)
    config.meta = meta_block(ways=1, shots=10, queries=10, meta_batch=25, inner_lr=0.01)
    config.eval = eval_block(ways=(1,), shots=(5, 10), queries=100, batch=120)
    config.checkpoint.every = 5000
    # The paper's baseline: the same network trained by regression on points pooled from all
    # tasks, then fine-tuned on the K points; its step size is picked on meta-val tasks
    # (the paper tuned it too and plotted "pretrained, step=0.02").
    config.baseline.joint = True
    config.baseline.steps = 15000
    config.baseline.finetune_lrs = (0.001, 0.002, 0.005, 0.01, 0.02)
    return config
