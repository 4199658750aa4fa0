"""SentEval tasks as sentences and labels: find the files, prepare the TFDS builder, read splits.

    splits = load_senteval("mr", data_dir="../shared/data/senteval")
    sentences, labels = splits["train"]

The data directory comes from the argument, else from $MTL_SENTEVAL_DIR; it is checked for the
task's files before TFDS is touched, so a wrong path fails at once with the fix in the message.
The prepared data lives in the TFDS data directory (`tfds_dir`, TFDS's default when None).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mtl import workdir_files
from mtl.data.senteval_tfds import TASKS, Senteval, missing_files
from mtl.data.tensorflow_needed import require_tensorflow
from mtl.errors import ConfigError, DataError, unknown_name

ENV_VAR = "MTL_SENTEVAL_DIR"
DATA_DIR_FLAG = "--config.data.data_dir"
SPLITS = ("train", "dev", "test")
CACHE_FILE = "mtl_splits.json"  # the splits as read once, beside the TFDS files

Split = tuple[list[str], np.ndarray]  # sentences, int32 labels


def resolve_data_dir(explicit: str | None) -> str:
    """`explicit`, else $MTL_SENTEVAL_DIR; raises `DataError` when neither is set."""
    path = explicit or os.environ.get(ENV_VAR)
    if not path:
        raise DataError(
            f"No SentEval data directory: set {DATA_DIR_FLAG}=/path/to/senteval or the "
            f"environment variable {ENV_VAR} (the folder holding MR, SUBJ, MPQA, SST2, SST5, TREC)."
        )
    return path


def num_classes(task: str) -> int:
    return len(TASKS[task].labels)


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """The task names, or `ConfigError` naming an unknown one."""
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ConfigError(f"No SentEval task requested; choose from {', '.join(TASKS)}.")
    for task in tasks:
        if task not in TASKS:
            raise unknown_name("SentEval task", task, TASKS, field="data.tasks")
    return list(tasks)


def check_data_dir(data_dir: str, tasks: Sequence[str]) -> epath.Path:
    """The data directory, after checking that it holds every file the tasks need."""
    root = epath.Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"The SentEval data directory {data_dir} does not exist. Set {DATA_DIR_FLAG} or "
            f"{ENV_VAR} to the folder holding MR, SUBJ, MPQA, SST2, SST5 and TREC."
        )
    missing = [f for task in tasks for f in missing_files(root, task)]
    if missing:
        raise DataError(
            f"{data_dir} lacks {', '.join(sorted(set(missing)))}. Put SentEval's files there "
            f"(see mtl/data/senteval_tfds.py for the layout) or point {DATA_DIR_FLAG} / {ENV_VAR} "
            "at the folder that has them."
        )
    return root


def load_senteval(
    task: str, data_dir: str | None = None, tfds_dir: str | None = None
) -> dict[str, Split]:
    """`{"train" | "dev" | "test": (sentences, labels)}` of one task, preparing it if needed."""
    (task,) = check_tasks([task])
    root = check_data_dir(resolve_data_dir(data_dir), [task])
    builder = Senteval(config=task, data_dir=tfds_dir)
    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(root))
        require_tensorflow(f"Preparing SentEval {task} as a TFDS data set", str(builder.data_dir))
        builder.download_and_prepare(download_config=config)
    # The splits as read once through tf.data, cached beside the TFDS files: later runs read
    # them without TensorFlow. Preparing again replaces the version folder, cache included.
    cache = builder.data_path / CACHE_FILE
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    require_tensorflow(f"Reading SentEval {task} from its TFDS files", str(builder.data_dir))
    out = {}
    for split in SPLITS:
        records = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        sentences = [s.decode("utf-8") for s in records["sentence"]]
        out[split] = (sentences, records["label"].astype(np.int32))
    try:
        workdir_files.write_json(
            cache, {s: {"sentences": x, "labels": y.tolist()} for s, (x, y) in out.items()}
        )
    except OSError as e:  # a read-only TFDS folder only costs the speed-up
        logging.warning("Could not cache SentEval %s at %s (%s).", task, cache, e)
    return out


def _read_cache(path: epath.Path) -> dict[str, Split] | None:
    """The cached splits, or None when there is no usable cache (rebuilt by the caller)."""
    if not path.exists():
        return None
    try:
        cached = json.loads(path.read_text())
        return {
            s: (cached[s]["sentences"], np.asarray(cached[s]["labels"], np.int32)) for s in SPLITS
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        logging.warning("Ignoring the unreadable SentEval cache %s (%s).", path, e)
        return None


def senteval_tasks(
    tasks: Sequence[str],
    *,
    data_dir: str | None,
    tfds_dir: str | None,
    tokenizer_dir: str | None,
    max_length: int,
    max_train_examples: int = 0,
    max_test_examples: int = 0,
    eval_split: str = "test",
    seed: int = 0,
) -> tuple[dict, dict]:
    """Train and evaluation array datasets with one label field per task (see `mtl.data.text`).

    Each example carries the label of its own task only. `max_train_examples` (0: all) keeps a
    seeded random subset of each task's training split, the same for every run with this seed;
    `max_test_examples` does the same for the evaluation split (for quick runs).
    """
    from mtl.data import text

    tasks = check_tasks(tasks)
    if eval_split not in ("dev", "test"):
        raise ConfigError(f"eval_split must be 'dev' or 'test', got {eval_split!r}.")
    root = os.fspath(check_data_dir(resolve_data_dir(data_dir), tasks))
    tokenizer = text.load_tokenizer(text.check_tokenizer_dir(tokenizer_dir))
    train, evaluation = [], []
    for task in tasks:
        splits = load_senteval(task, root, tfds_dir)
        for split, limit, out in (
            ("train", max_train_examples, train),
            (eval_split, max_test_examples, evaluation),
        ):
            sentences, labels = subsample(*splits[split], limit, seed, task)
            inputs = text.tokenize(tokenizer, sentences, max_length)
            out.append(text.text_dataset(inputs, task, labels, tasks))
    return text.concatenate(train), text.concatenate(evaluation)


def subsample(sentences: list[str], labels: np.ndarray, limit: int, seed: int, task: str) -> Split:
    """A seeded random subset of `limit` examples (all when `limit` <= 0 or >= N), in order."""
    if limit <= 0 or limit >= len(labels):
        return sentences, labels
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    keep = np.sort(rng.choice(len(labels), size=limit, replace=False))
    return [sentences[i] for i in keep], labels[keep]
