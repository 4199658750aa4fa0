"""The run paths import and run without TensorFlow (the GPU machine has none): training on
prepared data (test_train_loop.py's launcher run), conversion (test_convert.py's CLI run) and
every entry point's and benchmark's imports here; only preparing a TFDS data set needs it."""

import subprocess
import sys

from scripts import faults
from tests.helpers import without_tensorflow

MODULES = [
    "launch.train",
    "launch.convert",
    "launch.adapt",
    "launch.local",
    "mtl.runs.supervised",
    "mtl.runs.meta",
    "mtl.data.omniglot",
    "mtl.data.senteval",
    "mtl.data.image_folder",
    "mtl.data.tables",
    "benchmarks.maml_step",
    "benchmarks.mtl_step",
    "benchmarks.finetune_step",
    "benchmarks.per_task_grads",
]


def test_entry_points_import_and_preparing_data_says_it_needs_tensorflow(tmp_path, omniglot_dir):
    code = (
        "import importlib, sys\n"
        "from absl import flags\n"
        "builtin = set(flags.FLAGS)\n"
        f"for name in {MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    for flag in set(flags.FLAGS) - builtin:  # entry points share flag names\n"
        "        delattr(flags.FLAGS, flag)\n"
        "assert 'tensorflow' not in sys.modules, 'imported'\n"
        "from mtl.data.omniglot import load_omniglot\n"
        "from mtl.errors import DataError\n"
        "try:\n"
        f"    load_omniglot({omniglot_dir!r}, tfds_dir={str(tmp_path / 'tfds')!r})\n"
        "except DataError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=faults.REPO,
        env=without_tensorflow(tmp_path / "no_tf"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Preparing Omniglot as a TFDS data set needs TensorFlow" in done.stdout
    assert "pip install tensorflow-cpu" in done.stdout
