#!/usr/bin/env bash
# The oldest supported torch: builds ebjdat (strict, CUDA sources included when EBJDAT_BUILD_CUDA
# says so) against torch 2.11.0, the version of the GPU machine, and runs the op and training
# tests on CPU. It works in a copy of the tracked files with its own venv, so that the build
# for the main venv in this checkout is left alone. CI runs it after scripts/test.sh.
#   EBJDAT_FLOOR_TORCH / EBJDAT_FLOOR_VISION  the pair to test (default 2.11.0 / 0.26.0)
#   EBJDAT_FLOOR_DIR                          where to build (default: a new temporary dir)
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version=${EBJDAT_FLOOR_TORCH:-2.11.0}
vision_version=${EBJDAT_FLOOR_VISION:-0.26.0}
work=${EBJDAT_FLOOR_DIR:-$(mktemp -d -t ebjdat-floor-XXXXXX)}
mkdir -p "$work"
# Tracked files as they are in the working tree (a file deleted there is left out).
git ls-files -z | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$work"
cd "$work"
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
# numpy < 2.4: triton 3.6's CPU interpreter (what the tests run Triton kernels on) turns
# one-element arrays into scalars, which numpy 2.4 refuses; GPU runs do not use the interpreter.
python -m pip install -q "torch==$torch_version" "torchvision==$vision_version" "numpy<2.4" \
  ninja "setuptools>=77" wheel
EBJDAT_BUILD_STRICT=1 python -m pip install -q --no-build-isolation -e ".[test]"
python -m ebjdat.info
python -m pytest -q -p no:cacheprovider \
  tests/test_registration.py tests/test_sgld_step.py tests/test_pgd_step.py \
  tests/test_pgd_init.py tests/test_energy_head.py tests/test_ops_safety.py tests/test_noise.py \
  tests/test_cuda.py tests/test_sampling.py tests/test_train.py tests/test_data_parallel.py \
  "$@"
