#!/usr/bin/env bash
# Installs genrecast into .venv exactly as uv.lock says: every package at its locked version,
# every file checked against its locked hash, nothing else left in the environment.
#
#   bash tools/install.sh                  serving and every extra (webrtc, dashboard, train)
#   bash tools/install.sh OPTION...        these `uv sync` options instead, e.g. `--extra webrtc`
#                                          (serving and WebRTC only) or `--all-extras --group dev`
#   bash tools/install.sh --serve-only     serving alone, no extra
#   bash tools/install.sh --cpu [OPTION...]
#                                          the same with PyTorch's CPU-only build of the locked
#                                          torch/torchaudio release, from download.pytorch.org,
#                                          instead of PyPI's CUDA build and its CUDA libraries
#
# uv itself comes first, into .uv/, pinned and hash-checked by tools/uv.txt. PYTHON names the
# interpreter (default python3, 3.11 or newer).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
uv_version=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' tools/uv.txt)
if [ "$(.uv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$uv_version" ]; then
    rm -rf .uv
    "$python" -m venv .uv
    .uv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
        --require-hashes -r tools/uv.txt
fi

cpu=0
if [ "${1:-}" = "--cpu" ]; then
    cpu=1
    shift
fi
if [ $# -eq 0 ]; then
    set -- --all-extras
elif [ "$1" = "--serve-only" ]; then
    shift
fi

if [ $cpu -eq 0 ]; then
    exec .uv/bin/uv sync --frozen --python "$python" ${1+"$@"}
fi
# Everything from the lock but torch, torchaudio and the CUDA stack they alone pull in ...
skip=()
for name in $(sed -n 's/^name = "\(torch\|torchaudio\|triton\|nvidia-[^"]*\|cuda-[^"]*\)"$/\1/p' uv.lock); do
    skip+=(--no-install-package "$name")
done
.uv/bin/uv sync --frozen --python "$python" "${skip[@]}" ${1+"$@"}
# ... then the CPU build of the same torch/torchaudio release (their other needs came from the lock).
release=$(sed -n '/^name = "torch"$/{n;s/^version = "\(.*\)"$/\1/p;}' uv.lock)
exec .uv/bin/uv pip install --python .venv/bin/python --no-deps \
    --index-url https://download.pytorch.org/whl/cpu "torch==$release+cpu" "torchaudio==$release+cpu"
