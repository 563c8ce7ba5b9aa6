"""Real ``nats-server`` processes on free loopback ports, and ``genrecast worker`` processes
on them, for the tests of a cluster."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stream_server.cluster.nats_server import NatsServer, cluster_specs, start_all
from tests.helpers.cli import GENRECAST
from tests.helpers.constants import TIMEOUT_S

#: A worker process, by its id (from its ready line).
Workers = dict[str, subprocess.Popen[str]]


@contextmanager
def nats_cluster(
    root: Path,
    count: int = 3,
    *,
    user: str | None = None,
    password: str | None = None,
    host: str = "127.0.0.1",
) -> Iterator[list[NatsServer]]:
    """``count`` servers on ``host`` joined as one cluster (one: a lone server), each ready;
    stopped after."""
    specs = cluster_specs(count, root, host=host, user=user, password=password)
    servers = [NatsServer(spec) for spec in specs]
    start_all(servers)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def start_worker(
    config: Path, url: str, env: dict[str, str] | None = None
) -> tuple[str, subprocess.Popen[str]]:
    """``genrecast worker --config CONFIG --cluster URL`` (``env``: variables added to this
    process's); its id and process once ready."""
    proc = subprocess.Popen(
        [*GENRECAST, "worker", "--config", str(config), "--cluster", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env} if env else None,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.match(r"genrecast worker (\w+) ready: ", line)
        if match:
            return match.group(1), proc
    raise AssertionError(f"worker exited with {proc.wait()} before it was ready")


def stop_workers(workers: Workers) -> None:
    """SIGTERM every worker, SIGKILL one that does not stop in time; their pipes closed."""
    for proc in workers.values():
        proc.terminate()
    for proc in workers.values():
        try:
            proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


async def follow(sub: Any, until: set[str], out: list[dict[str, Any]]) -> None:
    """Messages from the ``/ws/updates`` connection ``sub`` into ``out`` until every stream of
    ``until`` has ended."""
    ended: set[str] = set()
    while ended != until:
        message = json.loads(await asyncio.wait_for(sub.recv(), 3 * TIMEOUT_S))
        out.append(message)
        if message["type"] == "stream.ended" and message["stream_id"] in until:
            ended.add(message["stream_id"])
