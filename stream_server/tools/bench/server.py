"""The server under test: ``genrecast serve`` as a child process with a config of its own, and
what ``/proc`` says about it."""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import subprocess
import time
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
from stream_server.tools.server_process import (
    ServerLog,
    start_serve,
    stop_serve,
    wait_port,
)
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


def raise_file_limit(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` where the hard limit allows
    (the server and the load processes inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@dataclass
class BenchServer:
    """A running server: its process, its URLs and what its ``/ready`` says."""

    proc: subprocess.Popen[str]
    log: ServerLog
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
    proc = start_serve(path)
    log = ServerLog(proc, "bench-server-log")
    try:
        port = wait_port(proc, log, READY_TIMEOUT_S)
        if isinstance(port, str):
            raise GenrecastError(f"the bench's server {port}")
        ready = _check_server(f"http://{HOST}:{port}", token)
        yield BenchServer(proc, log, port, token, ready)
    finally:
        stop_serve(proc, log, STOP_TIMEOUT_S)
