#!/bin/sh
# Install kat_scheduler's runtime the way the image does: the lock (requirements.txt), then the
# package itself without dependencies, so only the locked versions are ever installed.
#
#   scripts/install-runtime.sh PYTHON [requirements|package|all]
#
# PYTHON is the interpreter to install into (a venv's bin/python, or the image's python).
# The Dockerfile runs the two steps separately, so the dependency layer is cached until
# requirements.txt changes; everything else runs `all`.
set -eu

usage="usage: $0 PYTHON [requirements|package|all]"
python="${1:?$usage}"
step="${2:-all}"
root="$(cd "$(dirname "$0")/.." && pwd)"

case "$step" in
  requirements | package | all) ;;
  *) echo "$usage" >&2; exit 2 ;;
esac

if [ "$step" != package ]; then
  "$python" -m pip install --no-cache-dir -r "$root/requirements.txt"
fi
if [ "$step" != requirements ]; then
  "$python" -m pip install --no-cache-dir --no-deps "$root"
fi
