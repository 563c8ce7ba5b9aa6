"""Tests for stream_server.tools.server_process: waiting for a child server's port."""

from __future__ import annotations

import subprocess
import sys

from stream_server.tools.server_process import ServerLog, wait_port


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
