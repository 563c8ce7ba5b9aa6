"""Security carries over to a cluster: a worker and a node log in to a password-protected
``nats-server`` (``cluster.user`` and ``$GENRECAST_NATS_PASSWORD``) and serve as ever, the node
asking for its token as a lone server does; a wrong or missing password stops a worker and a
node at their start with the reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.helpers.cli import genrecast, start_server, stop_server, write_config
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run
from tests.helpers.nats import nats_cluster, start_worker, stop_workers

PASSWORD = "nats-pass-0123456789"
TOKEN = "node-token-0123456789abcdef"


@pytest.fixture(scope="module")
def protected(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path
) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("auth")
    config = write_config(root / "c.toml", tiny_checkpoint)
    with config.open("a", encoding="utf-8") as out:
        out.write('\n[cluster]\nuser = "genrecast"\n')
    with nats_cluster(root / "nats", 1, user="genrecast", password=PASSWORD) as (server,):
        yield server.spec.url, config


def test_a_node_and_a_worker_log_in_and_the_node_wants_its_token(
    protected: tuple[str, Path],
) -> None:
    url, config = protected
    env = {"GENRECAST_NATS_PASSWORD": PASSWORD}
    workers = dict([start_worker(config, url, env)])
    node, base = start_server(config, "--cluster", url, env=env | {"GENRECAST_TOKEN": TOKEN})

    async def scenario() -> dict[str, object]:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/streams")).status_code == 401
            headers = {"Authorization": f"Bearer {TOKEN}"}
            assert (await http.get("/streams", headers=headers)).status_code == 200
        ws = base.replace("http://", "ws://") + "/ws/ingest"
        async with connect(ws, compression=None, additional_headers=headers) as conn:
            start = {"type": "start", "sample_rate": 16000, "channels": 1, "format": "s16le"}
            await conn.send(json.dumps(start))
            assert json.loads(await conn.recv())["type"] == "stream.started"
            for _ in range(16):  # 8 s of quiet noise, in half seconds
                await conn.send(bytes(range(256)) * 62 + bytes(128))
                await asyncio.sleep(0.1)
            await conn.send(json.dumps({"type": "stop"}))
            while (message := json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S)))[
                "type"
            ] != "stream.ended":
                pass
        return message

    try:
        ended = run(scenario())
    finally:
        stop_server(node)
        stop_workers(workers)
    computed = ended["windows_computed"]
    assert isinstance(computed, int) and computed >= 1, ended  # scored by the worker


def test_a_wrong_or_missing_password_stops_them_at_their_start(
    protected: tuple[str, Path],
) -> None:
    url, config = protected
    worker = genrecast(
        "worker", "--config", str(config), "--cluster", url,
        env={"GENRECAST_NATS_PASSWORD": "wrong"},
    )  # fmt: skip
    assert worker.returncode == 2, worker.stdout + worker.stderr
    assert "refused the credentials of cluster.user 'genrecast'" in worker.stderr
    node = genrecast(
        "serve", "--config", str(config), "--cluster", url, "--port", "0",
        env={"GENRECAST_NATS_PASSWORD": ""},
    )  # fmt: skip
    assert node.returncode == 2, node.stdout + node.stderr
    assert "$GENRECAST_NATS_PASSWORD is empty" in node.stderr
    node = genrecast(
        "serve", "--config", str(config), "--cluster", url, "--port", "0",
        env={"GENRECAST_NATS_PASSWORD": "wrong"},
    )  # fmt: skip
    assert node.returncode == 2, node.stdout + node.stderr
    assert "refused the credentials of cluster.user 'genrecast'" in node.stderr
    assert "Traceback" not in node.stdout + node.stderr
