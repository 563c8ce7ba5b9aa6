"""SIGTERM to a real ``genrecast serve``: subscribers get every ``stream.ended``, the pushing
client its own, the timeline is stored, and the process exits in bounded time."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers.audio import music, to_s16le
from tests.helpers.cli import start_server, write_config
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import RATE, start


def test_sigterm_ends_every_stream_for_its_subscribers_and_exits(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    database = tmp_path / "timeline.db"
    proc, url = start_server(
        write_config(tmp_path / "config.toml", tiny_checkpoint, database=database)
    )
    ws_url = url.replace("http://", "ws://")
    try:

        async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]], float]:
            async with (
                connect(ws_url + "/ws/updates", compression=None) as sub,
                connect(ws_url + "/ws/ingest", compression=None) as ingest,
            ):
                await ingest.send(start(name="until the end"))
                started = json.loads(await ingest.recv())
                stream_id = started["stream_id"]
                audio = music(4.0, RATE)
                step = RATE // 10
                for i in range(0, len(audio), step):
                    await ingest.send(to_s16le(audio[i : i + step]))
                await asyncio.sleep(0.5)
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                seen: list[dict[str, object]] = []
                try:
                    while True:
                        raw = await asyncio.wait_for(sub.recv(), TIMEOUT_S)
                        seen.append(json.loads(raw))
                except ConnectionClosed:
                    pass
                told: list[dict[str, object]] = []
                try:
                    while True:
                        told.append(json.loads(await asyncio.wait_for(ingest.recv(), TIMEOUT_S)))
                except ConnectionClosed:
                    pass
                assert any(m.get("stream_id") == stream_id for m in seen)
                return seen, told, t0

        seen, told, t0 = asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT_S))
        ended = [m for m in seen if m["type"] == "stream.ended"]
        assert len(ended) == 1 and ended[0]["reason"] == "server stopping", seen[-3:]
        assert [m["type"] for m in told][-1:] == ["stream.ended"]
        # uvicorn re-raises the signal once it has shut down: death by SIGTERM, after the drain
        assert proc.wait(TIMEOUT_S) in (0, -signal.SIGTERM)
        assert time.monotonic() - t0 < 15.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT ended_at FROM streams").fetchall()
        segments = db.execute("SELECT COUNT(*) FROM segments").fetchone()
    assert len(rows) == 1 and rows[0][0] is not None  # ended and flushed
    assert segments is not None and segments[0] >= 1
