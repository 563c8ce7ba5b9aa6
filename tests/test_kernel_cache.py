"""The cap on oneDNN's compiled kernels (``engine.kernel_cache``): set before a process's first
kernel, it bounds the memory that kernels of many shapes take."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream_server.inference.heap import KERNEL_CACHE_ENV, cap_kernel_cache

ROOT = Path(__file__).resolve().parents[1]

#: A process that caps its kernel cache, runs one convolution over 200 input widths (200
#: kernels) and prints how much its RSS grew (MiB), freed memory handed back.
GROWTH = """
import os, sys
from stream_server.inference.heap import cap_kernel_cache, trim_heap
from stream_server.tools.server_process import rss_mb
cap_kernel_cache(int(sys.argv[1]))
import torch
def rss():
    return rss_mb(os.getpid())
conv = torch.nn.Conv2d(1, 16, (7, 38))
with torch.inference_mode():
    conv(torch.randn(1, 1, 96, 64))
    trim_heap()
    base = rss()
    for width in range(64, 264):
        conv(torch.randn(1, 1, 96, width))
    trim_heap()
print(rss() - base)
"""


def _growth_mib(entries: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != KERNEL_CACHE_ENV}
    done = subprocess.run(
        [sys.executable, "-c", GROWTH, str(entries)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def test_the_cap_is_set_once_and_an_environment_setting_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KERNEL_CACHE_ENV, raising=False)
    assert cap_kernel_cache(64) == 64 and os.environ[KERNEL_CACHE_ENV] == "64"
    monkeypatch.setenv(KERNEL_CACHE_ENV, "512")
    assert cap_kernel_cache(64) == 512
    with pytest.raises(ValueError, match=">= 0"):
        cap_kernel_cache(-1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc")
def test_a_capped_cache_keeps_less_memory_for_many_shapes() -> None:
    """200 shapes of one convolution: about 14 MiB of kernels kept by oneDNN's default
    capacity (1,024), about 4.5 MiB with none kept."""
    uncapped, capped = _growth_mib(1024), _growth_mib(0)
    assert capped < uncapped / 2, (capped, uncapped)
