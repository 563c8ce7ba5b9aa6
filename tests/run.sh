#!/usr/bin/env bash
# Installs genrecast with its development tools into .venv, then runs every check:
# ruff (format + lint), mypy (strict), pytest (warnings are errors) with branch coverage.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k server`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest --cov=ring_buffer --cov=stream_server --cov-branch --cov-report=term "$@"
# The ring buffer is a pure core: every branch of it is tested.
.venv/bin/coverage report --include='ring_buffer/*' --fail-under=100 >/dev/null
echo "ring_buffer branch coverage: 100%"
