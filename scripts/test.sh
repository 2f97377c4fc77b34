#!/usr/bin/env bash
# Sets up (scripts/setup.sh, strict build), then lints and runs the test suite. README and CI
# both run exactly this; arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EBJDAT_BUILD_STRICT=${EBJDAT_BUILD_STRICT:-1} bash scripts/setup.sh test
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
python -m ebjdat.info
ruff check .
python -m pytest -q "$@"
