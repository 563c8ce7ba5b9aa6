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
if [ $# -gt 0 ] || [ "${GENRECAST_TEST_JOBS:-2}" = 1 ]; then
    exec .venv/bin/pytest --durations=25 "$@"
fi
# Without arguments: most test files in two halves at once, then those that time a server or
# bound how fast it answers, on a quiet machine. Most tests wait on sockets, child processes and
# real time, so one pytest keeps one of two cores busy about 80 % of the time; every test uses
# its own ports (0), folders and processes, so the halves do not meet.
quiet=(bench client_tokens cluster_failover cluster_partition cluster_takeover cluster_worker
    dashboard flood slow_clients soak workers)
logs=$(mktemp -d)
halves=("" "")
tail_files=""
n=0
for file in tests/test_*.py; do
    name=${file#tests/test_}
    if [[ " ${quiet[*]} " == *" ${name%.py} "* ]]; then
        tail_files+=" $file"
    else
        halves[$((n % 2))]+=" $file"
        n=$((n + 1))
    fi
done
# shellcheck disable=SC2086 # the file lists are meant to split into words
.venv/bin/pytest -p no:cacheprovider --durations=15 ${halves[0]} >"$logs/1.log" 2>&1 &
first=$!
# shellcheck disable=SC2086
.venv/bin/pytest -p no:cacheprovider --durations=15 ${halves[1]} >"$logs/2.log" 2>&1 &
second=$!
status=0
wait "$first" || status=1
wait "$second" || status=1
for half in 1 2; do
    echo "=== tests, half $half of 2 ==="
    cat "$logs/$half.log"
done
rm -rf "$logs"
echo "=== tests that want the machine to themselves ==="
# shellcheck disable=SC2086
.venv/bin/pytest -p no:cacheprovider --durations=15 $tail_files || status=1
exit "$status"
