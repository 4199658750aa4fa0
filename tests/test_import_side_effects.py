"""Importing the engine starts no JAX backend: a multi-process run must call
`jax.distributed.initialize` first, and the launcher imports the config file (and with it
`mtl`) while it parses its flags."""

import subprocess
import sys

from tests.conftest import REPO

CHECK = """
import importlib, pathlib, pkgutil
import mtl
from jax._src import xla_bridge
names = [m.name for m in pkgutil.walk_packages(mtl.__path__, "mtl.")]
names += ["configs." + p.stem for p in pathlib.Path("configs").glob("*.py") if p.stem != "__init__"]
for name in names:
    importlib.import_module(name)
    assert not xla_bridge.backends_are_initialized(), f"importing {name} started a JAX backend"
print(len(names), "modules")
"""


def test_importing_every_module_and_config_starts_no_backend():
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[0]) > 50
