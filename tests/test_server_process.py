"""Tests for stream_server.tools.server_process: waiting for a child server's port, and what
``/proc`` says about a server with worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from stream_server.tools.server_process import ServerLog, cpu_seconds, rss_mb, tree, wait_port


def outcome(code: str, timeout_s: float) -> int | str:
    """What :func:`wait_port` says of a child process running ``code``."""
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        log = ServerLog(proc)
        try:
            return wait_port(proc, log, timeout_s)
        finally:
            proc.kill()
            log.thread.join(10.0)


def test_the_port_once_the_log_says_ready() -> None:
    ready = "print('loading'); print('genrecast ready on http://127.0.0.1:8123', flush=True)"
    assert outcome(ready + "; import time; time.sleep(60)", 30.0) == 8123


def test_a_server_that_exits_says_why_with_its_last_lines() -> None:
    why = outcome("print('cannot bind 127.0.0.1:8000'); raise SystemExit(3)", 30.0)
    assert isinstance(why, str)
    assert why.startswith("exited with status 3 after 30 s at most:")
    assert "cannot bind 127.0.0.1:8000" in why


def test_a_server_that_is_slow_is_not_waited_for_longer_than_asked() -> None:
    why = outcome("import time; print('still loading', flush=True); time.sleep(60)", 0.5)
    assert isinstance(why, str) and why.startswith("was not ready after 0.5 s at most:")


#: A child that holds 200 MiB and spins for a CPU second, then waits.
_BUSY_CHILD = """
import time
block = bytearray(200 * 1024 * 1024)
end = time.process_time() + 1.0
while time.process_time() < end:
    pass
print("spun", flush=True)
time.sleep(60)
"""
#: A parent that only starts that child and waits for it.
_PARENT = (
    f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {_BUSY_CHILD!r}]).wait()"
)


def test_a_servers_cpu_and_memory_include_its_worker_processes() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "spun"
            members = tree(proc.pid)
            assert members[0] == proc.pid and len(members) == 2
            cpu, own = cpu_seconds(proc.pid), cpu_seconds(members[1])
            assert cpu is not None and own is not None and cpu >= own >= 0.9
            rss = rss_mb(proc.pid)
            assert rss is not None and rss > 200
        finally:
            for pid in tree(proc.pid)[::-1]:
                os.kill(pid, signal.SIGKILL)
            proc.wait()
    assert cpu_seconds(proc.pid) is None and rss_mb(proc.pid) is None
