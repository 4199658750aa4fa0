"""TFDS builder `senteval`: the SentEval sentence classification sets, from local text files.

One builder config per task; each has `train`, `dev` and `test` splits of
`{"sentence": Text, "label": ClassLabel}`:

| config      | source files (in the manual directory)         | classes | splits                |
| ----------- | ---------------------------------------------- | ------- | --------------------- |
| mr          | MR/rt-polarity.neg, .pos                       | 2       | seeded 80/10/10       |
| subj        | SUBJ/subj.objective, .subjective               | 2       | seeded 80/10/10       |
| mpqa        | MPQA/mpqa.neg, .pos                            | 2       | seeded 80/10/10       |
| sst2        | SST2/sentiment-train, -dev, -test              | 2       | official              |
| sst5        | SST5/sentiment-train, -dev, -test              | 5       | official              |
| trec_coarse | TREC/train_5500.label, TREC_10.label           | 6       | official test, seeded |
|             |                                                |         | 90/10 train/dev       |
| trec_fine   | the same files, `COARSE:fine` labels           | 50      | as trec_coarse        |

Seeded splits: MR, SUBJ and MPQA have no official split (SentEval uses 10-fold
cross-validation), TREC no dev set. Their distinct sentences are shuffled by
`np.random.default_rng([SPLIT_SEED, crc32(folder)])` (so trec_coarse and trec_fine split
alike) and cut at the fractions above, and every copy of a sentence goes to the split of its
first copy, so no sentence is in two splits (MPQA repeats many phrases, 99 of them with both
labels). Empty lines are skipped. Official splits are kept as published, overlaps included:
TREC_10 shares 10 questions with train_5500, and SST's train/dev/test share 4 short sentences
("no . .", "what 's next ?", ...). Changing any of this is a new builder version.

The files are SentEval's (`data/downstream/get_transfer_data.bash` in facebookresearch/SentEval);
this builder never downloads: put them in the manual directory.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mtl.errors import DataError

SPLIT_SEED = 20240229
TREC_COARSE = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
# The 50 fine TREC classes (all appear in train_5500; the test set uses 42).
TREC_FINE = tuple(
    f"{coarse}:{fine}"
    for coarse, fines in (
        ("ABBR", "abb exp"),
        ("DESC", "def desc manner reason"),
        ("ENTY", "animal body color cremat currency dismed event food instru lang letter other "
                 "plant product religion sport substance symbol techmeth termeq veh word"),
        ("HUM", "desc gr ind title"),
        ("LOC", "city country mount other state"),
        ("NUM", "code count date dist money ord other perc period speed temp volsize weight"),
    )
    for fine in fines.split()
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Task:
    folder: str
    files: tuple[str, ...]  # relative to the folder
    labels: tuple[str, ...]
    split: str  # "seeded" (80/10/10), "official" or "trec" (official test, seeded dev)


TASKS: dict[str, Task] = {
    "mr": Task("MR", ("rt-polarity.neg", "rt-polarity.pos"), ("negative", "positive"), "seeded"),
    "subj": Task(
        "SUBJ", ("subj.objective", "subj.subjective"), ("objective", "subjective"), "seeded"
    ),
    "mpqa": Task("MPQA", ("mpqa.neg", "mpqa.pos"), ("negative", "positive"), "seeded"),
    "sst2": Task(
        "SST2",
        ("sentiment-train", "sentiment-dev", "sentiment-test"),
        ("negative", "positive"),
        "official",
    ),
    "sst5": Task(
        "SST5",
        ("sentiment-train", "sentiment-dev", "sentiment-test"),
        ("very negative", "negative", "neutral", "positive", "very positive"),
        "official",
    ),
    "trec_coarse": Task("TREC", ("train_5500.label", "TREC_10.label"), TREC_COARSE, "trec"),
    "trec_fine": Task("TREC", ("train_5500.label", "TREC_10.label"), TREC_FINE, "trec"),
}
FRACTIONS = {"seeded": (0.8, 0.1), "trec": (0.9,)}  # train (, dev); the rest is dev / test


def missing_files(directory: epath.PathLike, task: str) -> list[str]:
    """Files `task` needs that `directory` lacks (relative paths; cheap: nothing is read)."""
    spec = TASKS[task]
    root = epath.Path(directory)
    return [f"{spec.folder}/{f}" for f in spec.files if not (root / spec.folder / f).is_file()]


class SentevalConfig(tfds.core.BuilderConfig):
    """One SentEval task."""


class Senteval(tfds.core.GeneratorBasedBuilder):
    """SentEval's single-sentence classification tasks with fixed train/dev/test splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MR, SUBJ, MPQA, SST2, SST5, TREC coarse and fine; seeded splits."}
    BUILDER_CONFIGS = [SentevalConfig(name=name, description=name) for name in TASKS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put SentEval's downstream data folders (MR, SUBJ, MPQA, SST2, SST5, TREC, as fetched by
    `data/downstream/get_transfer_data.bash` of facebookresearch/SentEval) into the manual
    directory. SST2 and SST5 are SentEval's `SST/binary` and `SST/fine` folders.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=f"SentEval {self.builder_config.name}: sentence classification.",
            features=tfds.features.FeaturesDict(
                {
                    "sentence": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=TASKS[self.builder_config.name].labels),
                }
            ),
            supervised_keys=("sentence", "label"),
            homepage="https://github.com/facebookresearch/SentEval",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        name = self.builder_config.name
        root = epath.Path(dl_manager.manual_dir)
        missing = missing_files(root, name)
        if missing:
            raise DataError(f"SentEval {name}: {root} lacks {', '.join(missing)}.")
        splits = split_examples(name, read_examples(root, name))
        return {split: self._generate_examples(rows) for split, rows in splits.items()}

    def _generate_examples(self, rows: list[tuple[str, str, int]]):
        for key, sentence, label in rows:
            yield key, {"sentence": sentence, "label": label}


def read_examples(root: epath.Path, task: str) -> dict[str, list[tuple[str, str, int]]]:
    """`{file: [(key, sentence, label)]}` in file order; keys are `file:line`."""
    spec = TASKS[task]
    out = {}
    for index, name in enumerate(spec.files):
        path = root / spec.folder / name
        # TREC's train_5500 is latin-1; every other file is UTF-8 (latin-1 reads it too, wrongly).
        text = path.read_bytes().decode("latin-1" if name == "train_5500.label" else "utf-8")
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            sentence, label = _parse(spec, task, index, line, f"{spec.folder}/{name}:{number}")
            rows.append((f"{spec.folder}/{name}:{number}", sentence, label))
        out[name] = rows
    return out


def _parse(spec: Task, task: str, file_index: int, line: str, where: str) -> tuple[str, int]:
    """(sentence, label id) of one line; the file decides the label for one-sentence files."""
    try:
        if spec.split == "seeded":  # one file per class, in label order
            return line, file_index
        if spec.folder == "SST2":  # sentence<TAB>label
            sentence, label = line.rsplit("\t", 1)
            return sentence.strip(), int(label)
        if spec.folder == "SST5":  # label sentence
            label, sentence = line.split(" ", 1)
            return sentence.strip(), int(label)
        tag, sentence = line.split(" ", 1)  # TREC: COARSE:fine question
        name = tag.split(":")[0] if task == "trec_coarse" else tag
        return sentence.strip(), spec.labels.index(name)
    except ValueError as e:
        raise DataError(f"SentEval {task}: cannot parse {where}: {line[:80]!r} ({e}).") from e


def split_examples(task: str, files: dict[str, list]) -> dict[str, list]:
    """The train/dev/test rows of `task` (see the module docstring for the rules)."""
    spec = TASKS[task]
    if spec.split == "official":
        train, dev, test = (files[name] for name in spec.files)
        return {"train": train, "dev": dev, "test": test}
    if spec.split == "trec":
        parts = _seeded(spec.folder, files[spec.files[0]], FRACTIONS["trec"])
        return {"train": parts[0], "dev": parts[1], "test": files[spec.files[1]]}
    rows = [row for name in spec.files for row in files[name]]
    return dict(
        zip(("train", "dev", "test"), _seeded(spec.folder, rows, FRACTIONS["seeded"]), strict=True)
    )


def _seeded(folder: str, rows: list, fractions: tuple[float, ...]) -> list[list]:
    """Rows cut into len(fractions) + 1 parts by a seeded shuffle of their distinct sentences."""
    sentences = list(dict.fromkeys(sentence for _, sentence, _ in rows))  # first-seen order
    order = np.random.default_rng([SPLIT_SEED, zlib.crc32(folder.encode())]).permutation(
        len(sentences)
    )
    cuts = np.floor(np.cumsum(fractions) * len(sentences)).astype(int)
    part_of = {}
    for part, chunk in enumerate(np.split(order, cuts)):
        for i in chunk:
            part_of[sentences[i]] = part
    parts: list[list] = [[] for _ in range(len(fractions) + 1)]
    for row in rows:
        parts[part_of[row[1]]].append(row)
    return parts
