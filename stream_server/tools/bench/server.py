"""The server under test: ``genrecast serve`` as a child process with a config of its own, and
what ``/proc`` says about it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from stream_server.config import Config
from stream_server.errors import AccessRefused, GenrecastError
from stream_server.serve.auth import READ
from stream_server.tools.bench.figures import Geometry
from stream_server.tools.bench.options import READY_TIMEOUT_S, STOP_TIMEOUT_S
from stream_server.tools.client import auth_headers, refusal
from stream_server.tools.soak.runner import config_toml

#: Loopback address the bench serves on.
HOST = "127.0.0.1"
#: Seconds without audio before the server ends a stream, at least: streams open before the
#: run starts and wait for every other stream to open.
IDLE_TIMEOUT_S = 300.0


def bench_config(config: Config, streams: int, database: Path) -> Config:
    """``config`` as the bench's server runs it: on loopback, a free port, room for ``streams``
    streams from one address, warnings and errors only in its log, ``database`` for storage."""
    server = dataclasses.replace(
        config.server,
        host=HOST,
        port=0,
        log_level="warning",
        insecure=False,
        max_streams=max(config.server.max_streams, streams),
        max_streams_per_client=max(config.server.max_streams_per_client, streams),
        idle_timeout_s=max(config.server.idle_timeout_s, IDLE_TIMEOUT_S),
    )
    storage = dataclasses.replace(config.storage, database=str(database))
    return config.replace(server=server, storage=storage)


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` (``/proc/PID/stat``); ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command name: utime and stime are fields 14 and 15 of the line
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (``VmRSS``); ``None`` once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def raise_file_limit(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` where the hard limit allows
    (the server and the load processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class _Log:
    """The server's output, read by a thread: the port once it says it is ready, its last
    lines, and after that its ``WARNING`` lines counted and ``ERROR`` lines (and the last line of
    each traceback) kept, the first :attr:`KEPT`."""

    KEPT = 10
    READY = re.compile(r"ready on http://\S+:(\d+)")
    LEVEL = re.compile(r"^(WARNING|ERROR|CRITICAL)\b")

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.port: int | None = None
        self.ready = threading.Event()
        self.tail: deque[str] = deque(maxlen=20)
        self.warnings = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._read, name="bench-server-log", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        in_traceback = False
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self.tail.append(line)
            if self.port is None:
                match = self.READY.search(line)
                if match:
                    self.port = int(match.group(1))
                    self.ready.set()
                continue
            level = self.LEVEL.match(line)
            if in_traceback and not line.startswith(" "):
                in_traceback = False
                self._keep(line)
            elif level and level.group(1) == "WARNING":
                self.warnings += 1
            elif level:
                self._keep(line)
            in_traceback = in_traceback or line.startswith("Traceback")
        self.ready.set()  # it exited: nobody waits any more

    def _keep(self, line: str) -> None:
        if len(self.errors) < self.KEPT:
            self.errors.append(line)


@dataclass
class BenchServer:
    """A running server: its process, its URLs and what its ``/ready`` says."""

    proc: subprocess.Popen[str]
    log: _Log
    port: int
    token: str | None
    ready: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def geometry(self) -> Geometry:
        """The windows the server cuts, from its ``/ready``."""
        ready = self.ready
        return Geometry.of(int(ready["sample_rate"]), ready["window_s"], ready["hop_s"])

    def alive(self) -> bool:
        return self.proc.poll() is None


def _start(config_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stream_server.tools.cli", "serve", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _stop(proc: subprocess.Popen[str], log: _Log) -> None:
    """SIGINT, then SIGKILL after :data:`STOP_TIMEOUT_S` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.thread.join(5.0)
    if proc.stdout is not None:
        proc.stdout.close()


def _wait_port(proc: subprocess.Popen[str], log: _Log) -> int:
    log.ready.wait(READY_TIMEOUT_S)
    if log.port is None:
        status = proc.poll()
        why = f"exited with status {status}" if status is not None else "was not ready in time"
        tail = "\n".join(log.tail)
        raise GenrecastError(f"the bench's server {why}:\n{tail}")
    return log.port


def _get(client: httpx.Client, path: str) -> httpx.Response:
    try:
        return client.get(path)
    except httpx.HTTPError as exc:
        raise GenrecastError(f"the bench's server did not answer {path}: {exc}") from None


def _check_server(base: str, token: str | None) -> dict[str, Any]:
    """``/health`` (polled until it answers), ``/ready``, and ``/metrics`` with the token, which
    needs the ``read`` scope as ``/ws/updates`` does: a missing token fails here, before any
    load process starts. Returns ``/ready``'s answer."""
    headers = auth_headers(token)
    with httpx.Client(base_url=base, trust_env=False, timeout=10.0, headers=headers) as client:
        deadline = time.monotonic() + 10.0
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/health").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise GenrecastError("the bench's server does not answer /health")
            time.sleep(0.1)
        ready: dict[str, Any] = _get(client, "/ready").json()
        if not ready.get("ready"):
            raise GenrecastError(f"the bench's server is not ready: {ready.get('error')}")
        metrics = _get(client, "/metrics")
        reason = refusal(metrics.status_code, metrics.content, READ, bool(headers))
        if reason is not None:
            raise AccessRefused(metrics.status_code, reason)
    return ready


@contextlib.contextmanager
def running_server(
    config: Config, streams: int, folder: Path, token: str | None
) -> Iterator[BenchServer]:
    """``genrecast serve`` with :func:`bench_config` (config and database in ``folder``), from
    ready to stopped; the bench's requests carry ``token`` (``None``: ``$GENRECAST_TOKEN``). The
    server's environment is this process's: tokens the config or ``$GENRECAST_TOKEN`` sets apply
    to it as usual.

    Raises:
        GenrecastError: it did not start or does not answer.
        AccessRefused: it wants a token (or more scopes) than the bench's.
    """
    path = folder / "config.toml"
    path.write_text(config_toml(bench_config(config, streams, folder / "bench.db")), "utf-8")
    raise_file_limit(2 * streams + 256)
    proc = _start(path)
    log = _Log(proc)
    try:
        port = _wait_port(proc, log)
        ready = _check_server(f"http://{HOST}:{port}", token)
        yield BenchServer(proc, log, port, token, ready)
    finally:
        _stop(proc, log)
