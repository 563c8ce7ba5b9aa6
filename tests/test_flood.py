"""One client flooding costly frames does not starve another stream (real loopback server):
the largest frames at a slow resampling ratio (8009 Hz) or the highest rate and channel count
(384 kHz, 8 channels), sent as fast as the connection allows, while a healthy stream pushes in
real time and its subscriber counts the updates that arrive in time: within a second of the
moment the window's last audio was sent (a live label a second late is still live; one that
comes in a burst after a stall is not)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from stream_server.config import Config
from stream_server.inference.model import LoadedModel
from stream_server.serve.server import RunningServer, running_server
from tests.helpers.audio import music, to_s16le
from tests.helpers.live import (
    RATE,
    expected_windows,
    recv_json,
    run,
    start_stream,
    stop_stream,
    ws,
)

FRAME_BYTES = 1 << 20
SECONDS = 12.0
FRAME_S = 0.1
#: How late an update may arrive after its window's last audio was sent, in seconds.
IN_TIME_S = 1.5


async def flood(server: RunningServer, rate: int, channels: int, stop: asyncio.Event) -> int:
    """Send 1 MiB frames of noise as fast as the server takes them until ``stop``; returns how
    many were sent."""
    rng = np.random.default_rng(rate)
    frame = (rng.standard_normal(FRAME_BYTES // 2) * 3000).astype("<i2").tobytes()
    sent = 0
    async with ws(server, "/ws/ingest") as conn:
        start = {"type": "start", "sample_rate": rate, "channels": channels, "format": "s16le"}
        await conn.send(json.dumps(start))
        assert (await recv_json(conn))["type"] == "stream.started"
        try:
            while not stop.is_set():
                await conn.send(frame)
                sent += 1
        except ConnectionClosed:  # ended by the idle rule or the server: the flood is over
            pass
    return sent


@pytest.mark.parametrize(("rate", "channels"), [(8009, 1), (8000, 1), (384_000, 8)])
def test_a_flooding_client_does_not_starve_a_healthy_stream(
    make_config: Callable[..., Config], tiny_model: LoadedModel, rate: int, channels: int
) -> None:
    async def scenario() -> None:
        config = make_config(server={"max_frame_bytes": FRAME_BYTES, "max_sample_rate": 384_000})
        async with (
            running_server(config, model=tiny_model) as server,
            ws(server, "/ws/updates") as sub,
            ws(server, "/ws/ingest") as healthy,
            httpx.AsyncClient(base_url=server.http_url) as http,
        ):
            stream_id = await start_stream(healthy, name="healthy")
            arrivals: list[tuple[float, float]] = []  # (stream time, wall time received)

            async def listen() -> None:
                while True:
                    message = await recv_json(sub)
                    if message.get("stream_id") != stream_id:
                        continue
                    if message["type"] == "genre.update":
                        arrivals.append((message["stream_time_s"], time.monotonic()))
                    if message["type"] == "stream.ended":
                        return

            listener = asyncio.create_task(listen())
            stop = asyncio.Event()
            flooder = asyncio.create_task(flood(server, rate, channels, stop))
            await asyncio.sleep(0.2)
            audio = music(SECONDS, RATE)
            step = round(FRAME_S * RATE)
            sent_at: list[float] = []  # wall time each frame was sent
            t0 = time.monotonic()
            for k, i in enumerate(range(0, len(audio), step)):
                await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.monotonic()))  # real time
                await healthy.send(to_s16le(audio[i : i + step]))
                sent_at.append(time.monotonic())
            assert (await http.get("/health")).status_code == 200  # answered during the flood
            ended = await stop_stream(healthy)
            await listener
            stop.set()
            frames = await flooder
        due = expected_windows(SECONDS, 2.0, 0.5)
        assert frames >= 3, f"the flood sent only {frames} frames"
        assert ended["windows_computed"] + ended["windows_skipped"] == due
        late = [
            round(received - sent_at[min(len(sent_at), math.ceil(t / FRAME_S - 1e-6)) - 1], 2)
            for t, received in arrivals
        ]
        in_time = sum(d <= IN_TIME_S for d in late)
        assert in_time >= 0.95 * due, (in_time, due, frames, late)

    run(scenario())
