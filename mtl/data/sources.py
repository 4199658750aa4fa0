"""Multi-task data sets by name: `config.data.name` picks one, the rest of `config.data` are
its options (checked against the loader's keyword arguments).

A source returns `MultiTaskData`: train and test array datasets (see `mtl.data.arrays`) whose
label fields the tasks of a config read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from mtl.data.arrays import ArrayDataset
from mtl.errors import ConfigError, unknown_name
from mtl.registry import Registry

SOURCES: Registry = Registry("data set")


class MultiTaskData(NamedTuple):
    """Train and test array datasets; `classes` names each classification field's classes
    (index -> name) where the source knows them (reported in results.json)."""

    train: ArrayDataset
    test: ArrayDataset
    classes: Mapping[str, tuple[str, ...]] = {}

    def map(self, fn: Callable[[ArrayDataset], ArrayDataset]) -> MultiTaskData:
        """`fn` applied to both splits; the class names kept."""
        return MultiTaskData(fn(self.train), fn(self.test), self.classes)


@SOURCES.register("omniglot_alphabets")
def omniglot_alphabets(
    data_dir: str | None = None,
    tfds_dir: str | None = None,
    splits: Sequence[str] = ("small1", "small2"),
    image_size: int = 28,
    test_drawers: Sequence[int] = (16, 17, 18, 19, 20),
    rotation: bool = False,
    target_domain: str = "",
    pooled_tasks: Sequence[str] = (),
    rotate_every_image: bool = False,
) -> MultiTaskData:
    """Omniglot with one task per alphabet: classify the character within the alphabet.

    Args:
      data_dir: folder with the original Omniglot zips; None reads $MTL_OMNIGLOT_DIR, and
        without it TFDS downloads them.
      tfds_dir: where TFDS keeps the prepared data (TFDS's default when None).
      splits: which zips to use (`small1`, `small2`, `train` = background, `test` = evaluation).
      image_size: side of the square images after resizing (MAML uses 28).
      test_drawers: the drawers (1..20) whose drawings form the test set.
      rotation: add the self-supervised rotation-prediction task (label field "rotation",
        see `mtl.data.rotation`) to both splits.
      target_domain: "" (none), or "negative", "noisy" or "shifted": add a transformed copy of
        every image labelled under `<alphabet>_<domain>` (see `mtl.data.omniglot_domains`; a
        DANN run's target).
      pooled_tasks: label fields over all alphabets, labelling every image: "alphabet" (which
        alphabet) and "character" (which character of all alphabets); see
        `mtl.data.omniglot.POOLED`.
      rotate_every_image: rotate every image by a seeded multiple of 90 degrees and label it
        (field "rotation") beside its other labels: rotation as a task on the same inputs
        (`mtl.data.rotation.rotate_every_image`). Not with `rotation`.
    """
    from mtl.data import omniglot_domains

    if rotation and rotate_every_image:
        raise ConfigError(
            "data.rotation adds rotated copies for a rotation task of their own, and "
            "data.rotate_every_image rotates the images themselves; set only one."
        )

    if target_domain and target_domain not in omniglot_domains.DOMAINS:  # before any loading
        raise unknown_name(
            "target domain", target_domain, omniglot_domains.DOMAINS, field="data.target_domain"
        )
    from mtl.data import omniglot  # imports TensorFlow: only when this source is used

    for name in pooled_tasks:
        if name not in omniglot.POOLED:  # before any loading
            raise unknown_name("pooled task", name, omniglot.POOLED, field="data.pooled_tasks")

    images = omniglot.load_omniglot(
        omniglot.resolve_data_dir(data_dir),
        splits=tuple(splits),
        tfds_dir=tfds_dir,
        image_size=image_size,
    )
    train, test, _ = omniglot.alphabet_tasks(images, test_drawers, tuple(pooled_tasks))
    if rotation:
        from mtl.data.rotation import add_rotation_task

        train, test = add_rotation_task(train, seed=0), add_rotation_task(test, seed=1)
    if rotate_every_image:
        from mtl.data.rotation import rotate_every_image as rotate_all

        train, test = rotate_all(train, seed=0), rotate_all(test, seed=1)
    if target_domain:
        train = omniglot_domains.add_target_domain(train, target_domain, seed=0)
        test = omniglot_domains.add_target_domain(test, target_domain, seed=1)
    return MultiTaskData(train, test)


@SOURCES.register("senteval")
def senteval(
    tasks: Sequence[str] = ("mr",),
    data_dir: str | None = None,
    tfds_dir: str | None = None,
    tokenizer_dir: str | None = None,
    max_length: int = 64,
    max_train_examples: int = 0,
    max_test_examples: int = 0,
    eval_split: str = "test",
    seed: int = 0,
) -> MultiTaskData:
    """SentEval sentence classification, one label field per task (see `mtl.data.senteval`).

    Args:
      tasks: SentEval tasks (mr, subj, mpqa, sst2, sst5, trec_coarse, trec_fine).
      data_dir: folder with SentEval's MR, SUBJ, ... folders; None reads $MTL_SENTEVAL_DIR.
      tfds_dir: where TFDS keeps the prepared data (TFDS's default when None).
      tokenizer_dir: a Hugging Face tokenizer (a converted checkpoint holds one).
      max_length: tokens per sentence after truncation and padding, [CLS] and [SEP] included.
      max_train_examples: a seeded subset of each task's training split (0: all).
      max_test_examples: the same for the evaluation split (0: all).
      eval_split: "test", or "dev" for model selection.
      seed: seeds the subsets.
    """
    from mtl.data import senteval as senteval_data  # imports TensorFlow: only when used

    train, test = senteval_data.senteval_tasks(
        tasks,
        data_dir=data_dir,
        tfds_dir=tfds_dir,
        tokenizer_dir=tokenizer_dir,
        max_length=max_length,
        max_train_examples=max_train_examples,
        max_test_examples=max_test_examples,
        eval_split=eval_split,
        seed=seed,
    )
    return MultiTaskData(train, test)


@SOURCES.register("image_folder")
def image_folder(
    root: str = "",
    roots: Mapping[str, str] | None = None,
    labels_file: str = "",
    task: str = "label",
    image_size: int = 28,
    channels: int = 1,
    invert: bool = False,
    class_depth: int = 1,
    split_names: Sequence[str] = ("train", "test"),
    test_fraction: float = 0.2,
    split_seed: int = 0,
    classes: Mapping[str, Sequence[str]] | None = None,
    path_column: str = "path",
    label_columns: Sequence[str] = (),
    split_column: str = "",
    check_images: bool = True,
    in_memory: bool = False,
) -> MultiTaskData:
    """The user's images: one tree per task or one tree and a labels file; streamed from the
    files (see `mtl.data.image_tasks` and docs/data.md).

    Args:
      root: `ROOT/<class>/<file>` (one task named `task`), or the folder that the paths of
        `labels_file` are relative to.
      roots: task name -> its tree, for one tree per task (instead of `root`).
      labels_file: CSV / TSV / JSONL with `path_column` and one column per task; empty cells
        are missing labels.
      task: the label field (task) name of a single tree.
      image_size, channels, invert: what every image becomes (`mtl.data.images.ImageSpec`).
      class_depth: folder levels below the root that name a class (2: ROOT/<group>/<class>/).
      split_names: the train and test folder names of a `ROOT/<split>/<class>/<file>` tree.
      test_fraction: without split folders, the seeded fraction of each class held out.
      split_seed: seeds that fraction.
      classes: task -> its class names in label order (default: sorted names found).
      path_column, label_columns, split_column: the labels file's columns (label columns
        default to all others; the split column holds the `split_names`).
      check_images: decode every file once before training (a damaged file fails at once).
      in_memory: decode every image once at load and keep the arrays (for data sets that fit
        in memory: no decoding per batch); default: stream from the files.
    """
    from mtl.data import image_tasks, images

    splits, names = image_tasks.load(
        root=root,
        roots=roots,
        labels_file=labels_file,
        task=task,
        spec=images.ImageSpec(image_size, channels, invert),
        class_depth=class_depth,
        split_names=split_names,
        test_fraction=test_fraction,
        split_seed=split_seed,
        classes=classes,
        path_column=path_column,
        label_columns=label_columns,
        split_column=split_column,
        check_images=check_images and not in_memory,  # decoding all checks all
    )
    if in_memory:
        splits = {k: v | {"inputs": images.decode_all(v["inputs"])} for k, v in splits.items()}
    return MultiTaskData(splits["train"], splits["test"], names)


@SOURCES.register("text_table")
def text_table(
    train: str = "",
    test: str = "",
    text_column: str = "text",
    text_pair_column: str = "",
    label_columns: Sequence[str] = (),
    classes: Mapping[str, Sequence[str]] | None = None,
    tokenizer_dir: str | None = None,
    max_length: int = 64,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> MultiTaskData:
    """The user's sentences: a CSV / TSV / JSONL table, one task per label column (see
    `mtl.data.text_tasks` and docs/data.md).

    Args:
      train: the training table; `test`: the test table (else a seeded `test_fraction` of the
        training rows, drawn with `split_seed`).
      text_column: the sentence column; `text_pair_column`: a second one, for sentence pairs.
      label_columns: the tasks (default: every column that is not text). Empty cells are
        missing labels (masked).
      classes: task -> class names in label order (default: sorted values of the train table).
      tokenizer_dir: a Hugging Face tokenizer (a converted checkpoint holds one).
      max_length: tokens per example after truncation and padding, special tokens included.
    """
    from mtl.data import text_tasks

    train_data, test_data, names = text_tasks.load(
        train=train,
        test=test,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_columns=label_columns,
        classes=classes,
        tokenizer_dir=tokenizer_dir,
        max_length=max_length,
        test_fraction=test_fraction,
        split_seed=split_seed,
    )
    return MultiTaskData(train_data, test_data, names)


@SOURCES.register("tfds")
def tfds(
    dataset: str = "",
    data_dir: str = "",
    version: str = "",
    splits: Sequence[str] = ("train", "test"),
    image_key: str = "",
    text_key: str = "",
    text_pair_key: str = "",
    label_keys: Sequence[str] = (),
    image_size: int = 28,
    channels: int = 3,
    invert: bool = False,
    tokenizer_dir: str | None = None,
    max_length: int = 64,
    check_images: bool = True,
) -> MultiTaskData:
    """A TFDS data set prepared in `data_dir`, read from its files; never downloads (see
    `mtl.data.tfds_tasks` and docs/data.md).

    Args:
      dataset: the data set's name (its folder in `data_dir`); `version`: empty for the newest
        prepared one.
      splits: the prepared (train, test) splits.
      image_key or text_key (+ text_pair_key): the input feature(s).
      label_keys: one task (label field) per feature; negative labels are missing.
      image_size, channels, invert: what every image becomes (`mtl.data.images.ImageSpec`).
      tokenizer_dir, max_length: the tokenizer of text inputs.
      check_images: decode every image once before training.
    """
    from mtl.data import images, tfds_tasks

    splits_, names = tfds_tasks.load(
        name=dataset,
        data_dir=data_dir,
        version=version,
        splits=splits,
        image_key=image_key,
        text_key=text_key,
        text_pair_key=text_pair_key,
        label_keys=label_keys,
        spec=images.ImageSpec(image_size, channels, invert),
        tokenizer_dir=tokenizer_dir,
        max_length=max_length,
    )
    if check_images and image_key:
        for split in splits_.values():
            images.check_images(split["inputs"])
    return MultiTaskData(splits_["train"], splits_["test"], names)


def load(data_config: Mapping[str, Any]) -> MultiTaskData:
    """Loads the source named by `data_config.name` with the rest of the block as options."""
    options = dict(data_config)
    name = options.pop("name")
    loader = SOURCES.get(name, field="data.name")
    return loader(**SOURCES.options_from(name, options, field="data"))
