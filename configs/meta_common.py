"""Blocks shared by the meta-learning configs (`configs/*_maml.py`, `*_protonets.py`, ...)."""

import ml_collections

from mtl import optim
from mtl.meta import methods
from mtl.models import default_config as model_config
from mtl.transfer import restore


def meta_block(**overrides) -> ml_collections.ConfigDict:
    """`config.meta`: the method, its episodes, and the options of every method with their
    defaults (MAML's where two share a field), read from the methods' option classes (see
    mtl/meta/methods.py); each method reads only its own."""
    block = dict(
        method="maml",  # maml | reptile | protonets | imaml | r2d2 | ... (mtl.meta.methods)
        ways=5,
        shots=1,
        queries=15,  # per class
        meta_batch=32,  # episodes per meta-step, split over the devices of the mesh
    )
    block.update(methods.all_defaults())
    block.update(overrides)
    return ml_collections.ConfigDict(block)


def eval_block(**overrides) -> ml_collections.ConfigDict:
    """`config.eval`: held-out episodes scored after every inner step."""
    block = dict(
        episodes=600,
        batch=40,  # episodes per compiled call, split over the devices
        ways=(),  # () = meta.ways; ProtoNets and zero / proto heads take any number
        shots=(),  # () = meta.shots
        queries=15,
        inner_steps=10,
        seed=1234,
        val_every=0,  # score `val_episodes` meta-val episodes every this many steps (0: never)
        val_episodes=100,
    )
    block.update(overrides)
    return ml_collections.ConfigDict(block)


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.trainer = "meta"
    config.seed = 0
    config.num_steps = 1000
    config.log_every = 100
    config.model = model_config()
    config.model.head_hidden = ()
    config.optimizer = optim.default_config()
    config.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=2))
    # Batches made ahead in threads (workers > 0: in worker processes), see mtl.data.prefetch.
    config.input = ml_collections.ConfigDict(dict(threads=2, prefetch=0, workers=0))
    # float32 | bfloat16: the trunk's compute dtype; parameters stay float32 (mtl.models.precision).
    config.precision = "float32"
    config.mesh = ml_collections.ConfigDict(dict(data=-1))
    # A pretrained trunk to start from: a converted checkpoint or a run's workdir (see
    # mtl.transfer.restore); "" starts from random weights.
    config.init = ml_collections.ConfigDict(
        dict(
            checkpoint=ml_collections.FieldReference("", field_type=str),
            keep_fresh=restore.KEEP_FRESH,  # new-model parameters allowed to start fresh
            skip=restore.SKIP,  # checkpoint parameters the model may leave out
        )
    )
    config.baseline = ml_collections.ConfigDict(
        dict(joint=False, steps=0, learning_rate=1e-3, finetune_lrs=(0.01,))
    )
    return config
