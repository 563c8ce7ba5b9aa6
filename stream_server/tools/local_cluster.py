"""``genrecast cluster up`` / ``cluster down``: a whole cluster on this machine's loopback, for
trying it: NATS servers joined as one cluster, inference workers and API nodes, each a process
of its own that outlives the command (a session of its own), logging to a file.

Everything lives in one folder (``--dir``; default ``$XDG_STATE_HOME/genrecast/cluster``, else
``~/.local/state/genrecast/cluster``): the NATS servers' stores and configurations under
``nats/``, every process's log, and :data:`STATE` listing the processes (pids, addresses, logs)
for ``cluster down``. The stores stay after ``down``: the next ``up`` in the same folder finds
the streams and timelines kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from stream_server.cluster.nats_server import NatsServer, cluster_specs
from stream_server.errors import ClusterError

__all__ = [
    "STATE",
    "LocalCluster",
    "Process",
    "cluster_down",
    "cluster_up",
    "default_dir",
    "stop_processes",
]

#: The file in the folder that lists the cluster's processes.
STATE: Final = "cluster.json"
#: Seconds the workers and nodes have to say they are ready (they load the model at once).
READY_TIMEOUT_S: Final = 300.0
#: Seconds a process has to exit after SIGTERM before it is killed: a node drains its streams
#: (10 s), stops its pulls and writes what its archive still holds (10 s each, at most).
STOP_TIMEOUT_S: Final = 45.0
_NODE_READY = re.compile(r"genrecast ready on (http://\S+)")
_WORKER_READY = re.compile(r"genrecast worker (\w+) ready")


def default_dir() -> Path:
    """``$XDG_STATE_HOME/genrecast/cluster``, else ``~/.local/state/genrecast/cluster``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "genrecast" / "cluster"


@dataclass
class Process:
    """One process of the cluster: its role (``nats``, ``worker``, ``node``), pid, log (this
    run's lines from byte ``log_from`` on: logs are kept across runs), and what it is reached
    at (a NATS URL, a node's HTTP URL, a worker's id)."""

    role: str
    pid: int
    log: str
    address: str = ""
    log_from: int = 0


@dataclass
class LocalCluster:
    """The processes of a cluster started by :func:`cluster_up` (its :data:`STATE` file)."""

    folder: str
    nats_urls: list[str]
    processes: list[Process] = field(default_factory=list)

    def of(self, role: str) -> list[Process]:
        return [p for p in self.processes if p.role == role]

    def save(self) -> None:
        path = Path(self.folder) / STATE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> LocalCluster | None:
        """The cluster recorded in ``folder``, or ``None``."""
        try:
            raw = json.loads((folder / STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"{folder / STATE} cannot be read: {exc}") from None
        processes = [Process(**p) for p in raw.pop("processes", [])]
        return cls(**raw, processes=processes)

    def describe(self) -> str:
        """What is running, where its logs are, and how to stop it (for the terminal)."""
        lines = [f"genrecast cluster in {self.folder}:"]
        for p in self.processes:
            lines.append(f"  {p.role:<6} {p.address:<28} pid {p.pid:<8} log {p.log}")
        nodes = [p.address for p in self.of("node")]
        lines += [
            f"NATS: {','.join(self.nats_urls)}",
            f"nodes: {' '.join(nodes)} (push, watch or open the dashboard with --server on any)",
            f"stop it: genrecast cluster down --dir {self.folder}",
        ]
        return "\n".join(lines)


def cluster_up(
    folder: Path,
    *,
    nats: int = 3,
    nodes: int = 2,
    workers: int = 2,
    config: Path | None = None,
    port: int = 8000,
) -> LocalCluster:
    """Start ``nats`` NATS servers (joined), ``workers`` inference workers and ``nodes`` API
    nodes on loopback, and wait until each is ready. Node ``i`` listens on ``port + i`` (every
    node on a free port when ``port`` is 0). On any failure what was started is stopped again.

    Raises:
        ClusterError: a cluster is up in ``folder`` already, a count is out of range, a process
            exited or was not ready in time (with its log's last lines).
    """
    for name, count, least in (
        ("--nats", nats, 1),
        ("--nodes", nodes, 1),
        ("--workers", workers, 1),
    ):
        if not least <= count <= 16:
            raise ClusterError(f"{name} must be 1..16, not {count}")
    folder.mkdir(parents=True, exist_ok=True)
    if (running := LocalCluster.load(folder)) is not None and any(
        _running(p) for p in running.processes
    ):
        raise ClusterError(
            f"a cluster is up in {folder} already: genrecast cluster down --dir {folder}"
        )
    stores = [d for d in (folder / "nats").glob("nats-*") if d.is_dir()]
    if stores and len(stores) != nats:  # its streams' replicas would miss their peers
        raise ClusterError(
            f"{folder} holds the stores of {len(stores)} NATS servers: --nats {len(stores)}, "
            "or another --dir"
        )
    servers = [NatsServer(spec) for spec in cluster_specs(nats, folder / "nats")]
    cluster = LocalCluster(str(folder), [server.spec.url for server in servers])
    try:
        for server in servers:
            server.start(new_session=True)
            assert server.pid is not None
            cluster.processes.append(
                Process("nats", server.pid, str(server.log_path), server.spec.url)
            )
            cluster.save()  # from here on, `cluster down` finds whatever was started
        for server in servers:
            server.wait_ready()
        urls = ",".join(cluster.nats_urls)
        common = ["--cluster", urls, *(["--config", str(config)] if config else [])]
        for i in range(workers):
            _spawn(cluster, "worker", f"worker-{i + 1}", ["worker", *common])
        for i in range(nodes):
            node_port = 0 if port == 0 else port + i
            _spawn(cluster, "node", f"node-{i + 1}", ["serve", *common, "--port", str(node_port)])
        cluster.save()
        _wait_ready(cluster)
        cluster.save()
    except BaseException:
        stop_processes(cluster)
        (folder / STATE).unlink(missing_ok=True)
        raise
    return cluster


def _spawn(cluster: LocalCluster, role: str, name: str, args: Sequence[str]) -> None:
    log = Path(cluster.folder) / f"{name}.log"
    with open(log, "ab") as out:
        log_from = out.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream_server.tools.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    cluster.processes.append(Process(role, proc.pid, str(log), log_from=log_from))
    cluster.save()


def _wait_ready(cluster: LocalCluster) -> None:
    """Wait until every worker and node wrote its ready line; their addresses from them."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = [p for p in cluster.processes if p.role in ("worker", "node")]
    while waiting:
        for p in list(waiting):
            with open(p.log, "rb") as log:
                log.seek(p.log_from)
                text = log.read().decode("utf-8", errors="replace")
            found = (_NODE_READY if p.role == "node" else _WORKER_READY).search(text)
            if found:
                p.address = found.group(1)
                waiting.remove(p)
            elif not _alive(p.pid):
                tail = " | ".join(text.strip().splitlines()[-5:])
                raise ClusterError(f"the {p.role} (pid {p.pid}) exited: {tail}")
        if time.monotonic() > deadline:
            names = ", ".join(f"{p.role} {p.pid}" for p in waiting)
            raise ClusterError(f"not ready within {READY_TIMEOUT_S:.0f} s: {names}")
        time.sleep(0.2)


def cluster_down(folder: Path) -> LocalCluster | None:
    """Stop the cluster recorded in ``folder``: nodes first (they end their streams), then the
    workers, then the NATS servers; SIGTERM, SIGKILL after :data:`STOP_TIMEOUT_S`. Its record
    goes, its stores and logs stay. ``None`` if no cluster is recorded there."""
    cluster = LocalCluster.load(folder)
    if cluster is None:
        return None
    stop_processes(cluster)
    (folder / STATE).unlink(missing_ok=True)
    return cluster


def stop_processes(cluster: LocalCluster) -> None:
    """SIGTERM the cluster's processes that still run, by role (nodes, workers, NATS), each
    role given :data:`STOP_TIMEOUT_S` before SIGKILL."""
    for role in ("node", "worker", "nats"):
        group = [p for p in cluster.of(role) if _running(p)]
        for p in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(_alive(p.pid) for p in group) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in group:
            if _running(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)


def _running(p: Process) -> bool:
    """``p`` still runs, and its pid is still this cluster's process (not one reused since)."""
    if not _alive(p.pid):
        return False
    marker = b"nats-server" if p.role == "nats" else b"stream_server.tools.cli"
    try:
        return marker in Path(f"/proc/{p.pid}/cmdline").read_bytes()
    except OSError:  # no /proc here: trust the pid
        return True


def _alive(pid: int) -> bool:
    """The process runs (not a zombie: one of this process's children that exited is reaped)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True
