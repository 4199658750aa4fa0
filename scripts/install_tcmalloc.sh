#!/usr/bin/env bash
# Installs TCMalloc, which the entry points run under (mtl/allocator.py): XLA's CPU steps are
# much faster with it than with glibc's malloc. Best effort: without apt-get or root it says
# so and leaves the machine alone; the engine then runs, slower, on glibc's malloc.
set -uo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libtcmalloc'; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "setup: no apt-get; install TCMalloc (gperftools) yourself for faster CPU steps." >&2
  exit 0
fi
if [ "$(id -u)" = 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
  echo "setup: not root; run 'sudo apt-get install libtcmalloc-minimal4' for faster CPU steps." >&2
  exit 0
fi
# Debian 12 names the package libtcmalloc-minimal4; Ubuntu 24.04 libtcmalloc-minimal4t64.
packages=(libtcmalloc-minimal4 libtcmalloc-minimal4t64)
known() { apt-cache show "$1" >/dev/null 2>&1; }
known "${packages[0]}" || known "${packages[1]}" || "${sudo[@]}" apt-get update -qq >/dev/null 2>&1
for package in "${packages[@]}"; do
  if known "$package" &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1; then
    echo "setup: installed $package (TCMalloc)."
    exit 0
  fi
done
echo "setup: could not install TCMalloc with apt-get; the engine runs on glibc's malloc." >&2
