#!/usr/bin/env bash
# Installs genrecast with every extra and the development tools into .venv from the lock, then
# runs every check: the lock agrees with pyproject.toml, ruff (format + lint), mypy (strict),
# the ring buffer's branch coverage (100 %), pytest (warnings are errors).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k server`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install.sh --all-extras --group dev
# uv.lock must be what pyproject.toml resolves to: a changed dependency needs `.uv/bin/uv lock`.
.uv/bin/uv lock --check --offline

.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
# The ring buffer is a pure core: its own tests cover every branch of it.
.venv/bin/pytest -q --cov=ring_buffer --cov-branch --cov-report= \
    tests/test_ring_buffer.py tests/test_ring_buffer_package.py
.venv/bin/coverage report --include='ring_buffer/*' --fail-under=100 >/dev/null
echo "ring_buffer branch coverage: 100%"
# Every test, without coverage (tracing would slow the suite by half; for a report of the
# whole code: .venv/bin/pytest --cov=stream_server --cov-branch).
# --durations: the slowest tests, to keep the whole run well inside CI's 30 minutes.
.venv/bin/pytest --durations=25 "$@"
