"""``genrecast cluster up`` / ``cluster down`` as commands: a 3-server NATS cluster, a worker
and two nodes on loopback, in the background; a stream pushed to one node is read on the other;
a second ``up`` is refused; ``down`` stops every process and says so when nothing is up."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from stream_server.tools.local_cluster import STATE
from tests.helpers.cli import genrecast, write_config
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _push_and_read(first: str, second: str) -> tuple[str, dict[str, object]]:
    """One second of silence pushed to node ``first``; its stream as ``second`` lists it."""
    ws = first.replace("http://", "ws://") + "/ws/ingest"
    async with connect(ws, compression=None) as conn:
        start = {"type": "start", "sample_rate": 16000, "channels": 1, "format": "s16le"}
        await conn.send(json.dumps(start | {"name": "quiet"}))
        stream_id = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))["stream_id"]
        await conn.send(bytes(32000))
        await conn.send(json.dumps({"type": "stop"}))
        while json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))["type"] != "stream.ended":
            pass
    async with httpx.AsyncClient(base_url=second) as http:
        for _ in range(round(TIMEOUT_S / 0.1)):
            streams = (await http.get("/streams")).json()["streams"]
            listed = next((s for s in streams if s["stream_id"] == stream_id), None)
            if listed is not None and listed["state"] == "ended":
                return stream_id, listed
            await asyncio.sleep(0.1)
    raise AssertionError(f"{second} never listed {stream_id} as ended")


def test_cluster_up_starts_a_working_cluster_and_down_stops_it(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    folder = tmp_path / "cluster"
    config = write_config(tmp_path / "c.toml", tiny_checkpoint)
    args = ("--nats", "3", "--nodes", "2", "--workers", "1", "--port", "0")
    args += ("--config", str(config), "--dir", str(folder))
    up = genrecast("cluster", "up", *args, timeout=10 * TIMEOUT_S)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        pids = [p["pid"] for p in state["processes"]]
        assert [p["role"] for p in state["processes"]].count("nats") == 3
        assert all(_running(pid) for pid in pids)
        nodes = re.findall(r"node\s+(http://127\.0\.0\.1:\d+)", up.stdout)
        assert len(nodes) == 2, up.stdout
        assert f"genrecast cluster down --dir {folder}" in up.stdout
        for log in (p["log"] for p in state["processes"]):
            assert Path(log).is_file()
        for node in nodes:
            ready = httpx.get(node + "/ready", timeout=TIMEOUT_S).json()
            assert ready["device"].startswith("cluster ("), ready
        _, listed = run(_push_and_read(nodes[0], nodes[1]))
        assert listed["name"] == "quiet"

        again = genrecast("cluster", "up", *args)
        assert again.returncode == 2 and "is up in" in again.stderr, again.stderr
    finally:
        down = genrecast("cluster", "down", "--dir", str(folder), timeout=6 * TIMEOUT_S)
    assert down.returncode == 0, down.stderr
    assert "stopped 6 processes" in down.stdout
    assert not any(_running(pid) for pid in pids)
    assert not (folder / STATE).exists() and (folder / "nats" / "nats-1").is_dir()
    gone = genrecast("cluster", "down", "--dir", str(folder))
    assert gone.returncode == 1 and "no cluster is up" in gone.stderr
