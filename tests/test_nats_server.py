"""The NATS servers of a cluster (:mod:`stream_server.cluster.nats_server`), as real
``nats-server`` processes on loopback: configurations the server itself accepts, a three-server
JetStream cluster that keeps every acknowledged message through a ``kill -9`` of one server, a
server that rejoins, credentials enforced, clear errors."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sysconfig
from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError

from stream_server.cluster.nats_server import (
    NatsServer,
    NatsServerSpec,
    cluster_specs,
    config_text,
    find_nats_server,
    free_ports,
)
from stream_server.errors import ClusterError, MissingExtraError
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run
from tests.helpers.nats import nats_cluster


def _check_config(spec: NatsServerSpec, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / f"{spec.name}.conf"
    conf.write_text(config_text(spec), encoding="utf-8")
    return subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def test_the_configurations_are_what_nats_server_accepts(tmp_path: Path) -> None:
    specs = cluster_specs(3, tmp_path, user="genrecast", password='p"w d\\1')
    for spec in specs:
        checked = _check_config(spec, tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert len(spec.routes) == 2 and spec.route not in spec.routes
    ports = [p for s in specs for p in (s.client_port, s.cluster_port, s.monitor_port)]
    assert len(set(ports)) == len(ports) == 9
    (lone,) = cluster_specs(1, tmp_path)
    assert lone.routes == () and "cluster" not in config_text(lone)
    assert "authorization" not in config_text(lone)


def test_bad_clusters_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="at least one"):
        cluster_specs(0, tmp_path)
    with pytest.raises(ClusterError, match=r"10\.0\.0\.1 \(not loopback\) needs a user"):
        cluster_specs(3, tmp_path, host="10.0.0.1")


async def _acknowledged(js: JetStreamContext, subject: str, data: bytes) -> int:
    """Publishes until acknowledged (the stream may be electing a leader after a kill: no
    responders, or no reply in time); the one message id makes a retry not a second copy."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        try:
            ack = await js.publish(subject, data, timeout=1.0, headers={"Nats-Msg-Id": subject})
        except (NoRespondersError, NoStreamResponseError, nats.errors.TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return ack.seq


async def _replicated(servers: list[NatsServer]) -> None:
    urls = [server.spec.url for server in servers]
    first = await nats.connect(servers=[urls[0]], connect_timeout=TIMEOUT_S)
    try:
        js = first.jetstream()
        await js.add_stream(StreamConfig(name="T", subjects=["t.>"], num_replicas=3))
        for i in range(10):
            assert await _acknowledged(js, f"t.{i}", str(i).encode()) == i + 1
    finally:
        await first.close()

    servers[1].kill()  # kill -9: two of three keep the quorum
    third = await nats.connect(servers=[urls[2]], connect_timeout=TIMEOUT_S)
    try:
        js = third.jetstream()
        for i in range(10, 20):  # acknowledged by the two left, once elected
            assert await _acknowledged(js, f"t.{i}", str(i).encode()) == i + 1
    finally:
        await third.close()

    servers[1].start()  # the killed one comes back with its store and catches up
    await asyncio.to_thread(servers[1].wait_ready)
    back = await nats.connect(servers=[urls[1]], connect_timeout=TIMEOUT_S)
    try:
        js = back.jetstream()
        for _ in range(100):
            info = await js.stream_info("T")
            if info.state.messages == 20:
                break
            await asyncio.sleep(0.1)
        got = [(await js.get_msg("T", seq)).data for seq in range(1, 21)]
        assert got == [str(i).encode() for i in range(20)]
    finally:
        await back.close()


def test_a_three_server_cluster_keeps_every_acknowledged_message_through_a_kill(
    tmp_path: Path,
) -> None:
    with nats_cluster(tmp_path, 3) as servers:
        assert all(server.healthy() for server in servers)
        run(_replicated(servers))


def test_a_server_with_a_password_refuses_clients_without_it(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        # without credentials: the protocol by hand (the client library leaks its socket
        # when a first connection is refused)
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        assert (await reader.readline()).startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        assert await asyncio.wait_for(reader.readline(), TIMEOUT_S) == (
            b"-ERR 'Authorization Violation'\r\n"
        )
        writer.close()
        await writer.wait_closed()
        nc = await nats.connect(servers=[url], user="genrecast", password="s3cret")
        await nc.publish("x", b"1")
        await nc.close()

    with nats_cluster(tmp_path, 1, user="genrecast", password="s3cret") as (server,):
        conf = server.spec.store_dir.with_suffix(".conf")
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600  # it holds the password
        run(scenario(server.spec.url))


def test_a_server_that_cannot_listen_says_why(tmp_path: Path) -> None:
    (spec,) = cluster_specs(1, tmp_path)
    with nats_cluster(tmp_path / "first", 1) as (taken,):
        clash = NatsServerSpec(
            name="clash",
            store_dir=tmp_path / "clash",
            client_port=taken.spec.client_port,
            cluster_port=spec.cluster_port,
            monitor_port=free_ports(1)[0],
        )
        server = NatsServer(clash)
        server.start()
        try:
            with pytest.raises(ClusterError, match=r"NATS server clash exited with 1: .*in use"):
                server.wait_ready()
        finally:
            server.stop()


def test_the_binary_is_the_extras_then_the_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert find_nats_server().parent == Path(sysconfig.get_path("scripts"))
    empty, on_path = tmp_path / "scripts", tmp_path / "bin"
    empty.mkdir()
    on_path.mkdir()
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(empty))
    monkeypatch.setenv("PATH", str(on_path))
    with pytest.raises(MissingExtraError, match=r"'cluster' extra.*--extra cluster.*on PATH"):
        find_nats_server()
    fake = on_path / "nats-server"
    fake.write_text("#!/bin/sh\n", encoding="utf-8")
    fake.chmod(0o755)
    assert find_nats_server() == fake
    assert os.access(fake, os.X_OK)
