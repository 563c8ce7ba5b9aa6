"""A partition heals: node B runs in a network namespace of its own ("another host", its own
address, reached through a veth pair), node A, the worker and NATS here. While a stream is
pushed to A, B's link goes down for a while (``ip link set … down``) and comes back: B's NATS
client gets through again and a subscriber on B that resumes with ``since`` gets every update
of the stream, in order, once. Skipped, with the reason, where namespaces cannot be made."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from ring_buffer.buffer import to_pcm16
from stream_server.media.decode import decode_mono
from tests.helpers.audio import clips
from tests.helpers.cli import start_server, stop_server, write_config
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run
from tests.helpers.nats import follow, nats_cluster, start_worker, stop_workers
from tests.helpers.netns import Namespace, namespace

RATE = 16000
SECONDS = 14.0
#: How long node B is cut off, in seconds.
CUT_S = 5.0
PASSWORD = "partition-pass-0123456789"
TOKEN = "partition-token-0123456789abcdef"


def test_a_node_cut_off_for_a_while_catches_up_once_its_link_is_back(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    config = write_config(tmp_path / "c.toml", tiny_checkpoint)
    with config.open("a", encoding="utf-8") as out:
        out.write('\n[cluster]\nuser = "genrecast"\n')
    audio = decode_mono(str(clips("disco", 1)[0]), RATE)[: round(SECONDS * RATE)]
    pcm = to_pcm16(audio).astype("<i2").tobytes()
    env = {"GENRECAST_NATS_PASSWORD": PASSWORD}
    with (
        namespace() as ns,
        nats_cluster(
            tmp_path / "nats", 1, user="genrecast", password=PASSWORD, host=ns.outer_ip
        ) as (server,),
    ):
        url = server.spec.url  # on this side of the veth pair: B reaches it through the link
        workers = dict([start_worker(config, url, env)])
        a, a_url = start_server(config, "--cluster", url, env=env)
        b, b_url = start_server(
            config,
            *("--cluster", url, "--host", ns.inner_ip),
            env=env | {"GENRECAST_TOKEN": TOKEN},
            wrap=ns.exec_prefix,
        )
        try:
            messages, ended, unreachable = run(_scenario(ns, a_url, b_url, pcm), 12 * TIMEOUT_S)
        finally:
            stop_server(a)
            stop_server(b)
            stop_workers(workers)
    assert b_url.startswith(f"http://{ns.inner_ip}:")
    assert unreachable  # the cut was real: B did not answer while it lasted
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, once
    updates = [m for m in messages if m["type"] == "genre.update"]
    assert len(updates) == ended["windows_computed"] >= 10  # every one, through the cut


async def _scenario(
    ns: Namespace, a_url: str, b_url: str, pcm: bytes
) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    ws_a, ws_b = (u.replace("http://", "ws://") for u in (a_url, b_url))
    conn = await connect(ws_a + "/ws/ingest", compression=None)
    start = {"type": "start", "name": "d", "sample_rate": RATE, "channels": 1, "format": "s16le"}
    await conn.send(json.dumps(start))
    stream_id = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))["stream_id"]
    sub = await connect(ws_b + "/ws/updates", compression=None, additional_headers=headers)
    seen: list[dict[str, Any]] = []
    reading = asyncio.create_task(_read(sub, seen))
    step = RATE // 10 * 2  # 0.1 s of audio, sent every 0.1 s
    cut_at = len(pcm) // step // 3
    unreachable = False
    for n, i in enumerate(range(0, len(pcm), step)):
        if n == cut_at:  # B alone: A goes on, its updates into the JetStream stream
            reading.cancel()
            await sub.close()
            ns.cut()
        elif n == cut_at + 10:
            unreachable = await _unreachable(b_url)
        elif n == cut_at + round(CUT_S / 0.1):
            ns.heal()
        await conn.send(pcm[i : i + step])
        await asyncio.sleep(0.1)
    await conn.send(json.dumps({"type": "stop"}))
    while (ended := json.loads(await asyncio.wait_for(conn.recv(), 3 * TIMEOUT_S)))[
        "type"
    ] != "stream.ended":
        pass
    await conn.close()
    since = seen[-1]["seq"] if seen else 0  # where B's subscriber left off before the cut
    async with connect(
        ws_b + f"/ws/updates?since={since}", compression=None, additional_headers=headers
    ) as again:
        await follow(again, {stream_id}, seen)
    return [m for m in seen if m.get("stream_id") == stream_id], ended, unreachable


async def _read(sub: Any, out: list[dict[str, Any]]) -> None:
    while True:
        out.append(json.loads(await sub.recv()))


async def _unreachable(base: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as http:
            await http.get(base + "/health")
    except httpx.HTTPError:
        return True
    return False
