#!/usr/bin/env bash
# Downloads the wheels of benchmarks/device_wheels.txt for the GPU machine (Python 3.12,
# manylinux x86_64) into .whl/, which git ignores and `device` carries:
#
#     bash scripts/download_device_wheels.sh [FOLDER]
#
# Pure-Python packages come as py3 wheels; a source-only one (promise, higher) is built into a
# wheel here, which is fine as it holds no compiled code.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.whl}"
mkdir -p "$out"
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
grep -v '^#' benchmarks/device_wheels.txt | grep -v '^$' | while read -r requirement; do
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${platforms[@]}" -d "$out" "$requirement" 2>/dev/null; then
    python3 -m pip wheel -q --no-deps -w "$out" "$requirement"  # source only: pure Python
  fi
done
du -sh "$out"
