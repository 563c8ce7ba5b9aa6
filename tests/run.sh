#!/usr/bin/env bash
# Installs genrecast with every extra and the development tools into .venv from the lock, then
# runs every check: the lock agrees with pyproject.toml, ruff (format + lint), mypy (strict),
# pytest (warnings are errors) with branch coverage.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k server`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install.sh --all-extras --group dev
# uv.lock must be what pyproject.toml resolves to: a changed dependency needs `.uv/bin/uv lock`.
.uv/bin/uv lock --check --offline

.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
# --durations: the slowest tests, to keep the whole run well inside CI's 30 minutes.
.venv/bin/pytest --cov=ring_buffer --cov=stream_server --cov-branch --cov-report=term --durations=25 "$@"
# The ring buffer is a pure core: every branch of it is tested.
.venv/bin/coverage report --include='ring_buffer/*' --fail-under=100 >/dev/null
echo "ring_buffer branch coverage: 100%"
