"""Real ``nats-server`` processes on free loopback ports, for the tests that need NATS."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stream_server.cluster.nats_server import NatsServer, cluster_specs, start_all


@contextmanager
def nats_cluster(
    root: Path, count: int = 3, *, user: str | None = None, password: str | None = None
) -> Iterator[list[NatsServer]]:
    """``count`` servers joined as one cluster (one: a lone server), each ready; stopped after."""
    servers = [
        NatsServer(spec) for spec in cluster_specs(count, root, user=user, password=password)
    ]
    start_all(servers)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
