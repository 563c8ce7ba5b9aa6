"""The ``genrecast`` command as a separate process: run one, or serve on a real loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.helpers.constants import TIMEOUT_S

#: ``genrecast`` run by this interpreter from this checkout.
GENRECAST = [sys.executable, "-m", "stream_server.tools.cli"]

#: Runs ``genrecast`` with some installed packages hidden: ``[*WITHOUT, "aiortc,streamlit", ...]``.
WITHOUT = [sys.executable, "-m", "tests.helpers.without"]


def write_config(
    path: Path,
    checkpoint: Path | str,
    *,
    port: int = 0,
    database: Path | str = ":memory:",
    extra: str = "",
) -> Path:
    """A ``config.toml`` for a quick loopback server: ``checkpoint`` on the CPU, 0.5 s hops
    (``checkpoint`` ``""``: the model genrecast ships); ``extra``: more TOML tables."""
    path.write_text(
        f"""
[server]
port = {port}
log_level = "warning"

[model]
path = "{checkpoint}"

[engine]
device = "cpu"
hop_s = 0.5

[storage]
database = "{database}"
{extra}
""",
        encoding="utf-8",
    )
    return path


def genrecast(
    *args: str,
    timeout: float = 3 * TIMEOUT_S,
    without: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end; ``without`` is a comma-separated list of modules to hide."""
    command = [*WITHOUT, without, *args] if without else [*GENRECAST, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=full_env, check=False
    )


def start_server(
    config: Path,
    *args: str,
    without: str = "",
    env: dict[str, str] | None = None,
    wrap: Sequence[str] = (),
) -> tuple[subprocess.Popen[str], str]:
    """``genrecast serve --config CONFIG [ARGS...]`` (``env``: variables added to this
    process's; ``wrap``: a command it runs under, e.g. ``ip netns exec NS``); returns once it
    prints its URL."""
    command = [*WITHOUT, without] if without else list(GENRECAST)
    proc = subprocess.Popen(
        [*wrap, *command, "serve", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env} if env else None,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until the server says it is ready
        match = re.search(r"ready on (http://\S+)", line)
        if match:
            return proc, match.group(1)
    raise AssertionError(f"server exited with {proc.wait()} before it was ready")


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
