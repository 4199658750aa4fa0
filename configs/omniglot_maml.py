"""MAML on Omniglot, with the settings of its paper (Finn et al. 2017).

    python -m launch.train --config=configs/omniglot_maml.py --workdir=/tmp/omniglot_maml \\
        --config.data.data_dir=../shared/data/omniglot

5-way 1-shot by default; `--config.meta.shots=5` for 5-shot, and the `20way` argument
(`--config=configs/omniglot_maml.py:20way`) for 20-way (inner steps 5, meta-batch 16). The
variants of the MAML family are arguments too, combined with a comma:

    :fomaml   first-order MAML            :metasgd  Meta-SGD (learned per-weight inner rates)
    :mamlpp   MAML++ (learned per-step per-layer rates, multi-step loss, per-step batch norm)
    :zerohead a head zeroed at the start of every episode: adapts to any number of ways

MAML's inner rate 0.4 (5-way) and 0.1 (20-way) apply to its loss summed over the support set
and divided by K, i.e. N times the mean loss; here losses are means, so both are 2.0. conv4 runs
its convolutions as matmuls (`model.conv4.conv="matmul"`), the fast form for per-episode
weights on CPU (see benchmarks/maml_step.py).
"""

from configs.meta_common import base_config, eval_block, meta_block

VARIANTS = {
    "5way": {},
    "20way": dict(ways=20, inner_steps=5, meta_batch=16),
    "fomaml": dict(first_order=True),
    "metasgd": dict(learn_inner_lr="per_param"),
    "mamlpp": dict(
        learn_inner_lr="per_layer_step",
        multi_step_loss=True,
        msl_anneal_steps=10000,
        per_step_bn=True,
        inner_steps=5,
        inner_lr=0.5,
    ),
    "zerohead": dict(head_init="zero"),
}


def get_config(variants: str = ""):
    config = base_config()
    config.num_steps = 60000
    config.log_every = 100
    config.data = dict(
        name="omniglot",
        data_dir="",  # "" reads $MTL_OMNIGLOT_DIR; the folder with the original zips
        tfds_dir="",
        splits=("small1", "small2"),
        image_size=28,
        split_fractions=(0.65, 0.1, 0.25),
        split_seed=0,
        rotations=(0, 1, 2, 3),
    )
    config.model.trunk = "conv4"
    config.model.conv4.update(filters=64, downsample="stride", pooling="mean", conv="matmul")
    overrides = dict(ways=5, shots=1, queries=15, meta_batch=32, inner_lr=2.0, inner_steps=1)
    for name in filter(None, variants.split(",")):
        if name not in VARIANTS:
            raise ValueError(f"Unknown variant {name!r}; known: {', '.join(VARIANTS)}.")
        overrides.update(VARIANTS[name])
    config.meta = meta_block(**overrides)
    config.eval = eval_block(inner_steps=10, val_every=1000)
    config.checkpoint.every = 500
    return config
