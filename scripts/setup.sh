#!/usr/bin/env bash
# Creates .venv (unless a virtual environment is active) and installs ebjdat with its native
# extension. Extra pip "extras" can be passed, e.g. `bash scripts/setup.sh test`.
#   EBJDAT_BUILD_CUDA=0|1  force the C++-only / CUDA build (1 fails if CUDA cannot be built)
#   EBJDAT_BUILD_STRICT=1  fail instead of falling back when a compile fails
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
extras=${1:-}
python -m pip install -q --upgrade pip
# A CUDA 13 build of torch (it brings triton); built against below without build isolation,
# so that pip does not fetch a second torch into a temporary build environment.
python -m pip install -q torch==2.14.1 torchvision==0.29.1 ninja "setuptools>=77" wheel
python -m pip install -q --no-build-isolation -e ".${extras:+[$extras]}"
