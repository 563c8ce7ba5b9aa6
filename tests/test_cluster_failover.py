"""A cluster on three real ``nats-server`` processes loses one of them (``kill -9``) while a
stream is pushed to a node: the node and the worker carry on through the other two, and a
subscriber on another node gets every update of the stream, in order, once, and the stream's
timeline, read on that node, holds every one of them."""

from __future__ import annotations

import asyncio
import itertools
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

RATE = 16000
SECONDS = 12.0


def test_a_killed_nats_server_loses_no_update(tmp_path: Path, tiny_checkpoint: Path) -> None:
    config = write_config(tmp_path / "c.toml", tiny_checkpoint)
    audio = decode_mono(str(clips("country", 1)[0]), RATE)[: round(SECONDS * RATE)]
    pcm = to_pcm16(audio).astype("<i2").tobytes()
    with nats_cluster(tmp_path / "nats", 3) as servers:
        first, second, third = (server.spec.url for server in servers)
        # the worker on the third server; node A on the first (the one killed), B on the second:
        # each learns the others from its server and moves there when it goes
        workers = dict([start_worker(config, third)])
        a, a_url = start_server(config, "--cluster", first)
        b, b_url = start_server(config, "--cluster", second)
        try:

            async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], Any]:
                ws_a, ws_b = (u.replace("http://", "ws://") for u in (a_url, b_url))
                async with connect(ws_b + "/ws/updates", compression=None) as sub:
                    conn = await connect(ws_a + "/ws/ingest", compression=None)
                    start = {"type": "start", "name": "c", "sample_rate": RATE, "channels": 1}
                    await conn.send(json.dumps(start | {"format": "s16le"}))
                    started = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
                    stream_id = started["stream_id"]
                    seen: list[dict[str, Any]] = []
                    following = asyncio.create_task(follow(sub, {stream_id}, seen))
                    step = RATE // 10 * 2
                    for n, i in enumerate(range(0, len(pcm), step)):
                        if n == len(pcm) // step // 2:
                            servers[0].kill()  # kill -9 node A's NATS server, mid-stream
                        await conn.send(pcm[i : i + step])
                        await asyncio.sleep(0.1)
                    await conn.send(json.dumps({"type": "stop"}))
                    await asyncio.wait_for(following, 6 * TIMEOUT_S)
                    await conn.close()
                ended = next(m for m in seen if m["type"] == "stream.ended")
                messages = [m for m in seen if m.get("stream_id") == stream_id]
                return messages, ended, await _timeline(b_url, stream_id, ended)

            messages, ended, timeline = run(scenario(), 12 * TIMEOUT_S)
        finally:
            stop_server(a)
            stop_server(b)
            stop_workers(workers)
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, once
    updates = [m for m in messages if m["type"] == "genre.update"]
    # every window the node computed reached the subscriber on the other node
    assert len(updates) == ended["windows_computed"] >= 10, [
        (m["seq"], m["type"], m.get("stream_time_s")) for m in messages
    ]
    times = [m["stream_time_s"] for m in updates]
    assert times == sorted(times)
    assert messages[0]["type"] == "stream.started"
    # the timeline node A wrote through the loss, read on B: every update in it, to the end
    segments = timeline["segments"]
    assert sum(s["updates"] for s in segments) == len(updates), segments
    assert segments[0]["start_s"] == 0.0 and segments[-1]["end_s"] == times[-1], segments
    assert all(x["end_s"] == y["start_s"] for x, y in itertools.pairwise(segments)), segments


async def _timeline(base: str, stream_id: str, ended: dict[str, Any]) -> Any:
    """The stream's timeline on ``base`` once it holds every update (the stream's node writes
    its last one a moment after ``stream.ended``), else as it last was."""
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(round(TIMEOUT_S / 0.1)):
            timeline = (await http.get(f"/streams/{stream_id}/timeline")).json()
            counted = sum(s["updates"] for s in timeline.get("segments", []))
            if counted >= ended["windows_computed"]:
                break
            await asyncio.sleep(0.1)
    return timeline
