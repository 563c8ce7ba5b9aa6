"""``genrecast bench``: throughput and latency of a real server under concurrent live streams.

Starts a server in this process on a free loopback port (temporary database; the clients share its
event loop, so the figures include their cost), opens ``streams``
ingest connections that each send ``seconds`` of synthetic audio at ``speed`` times real time,
subscribes to ``/ws/updates``, and reports windows computed and skipped, windows per second, batch
sizes and the end-to-end latency the server measured for each update. When the config or the
environment sets tokens, the server requires one and the clients send ``token`` (default:
``$GENRECAST_TOKEN``), which needs the ``ingest`` and ``read`` scopes.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection

from stream_server.config import Config
from stream_server.inference.loading import load_configured_model
from stream_server.inference.model import LoadedModel
from stream_server.serve.auth import READ
from stream_server.serve.server import running_server
from stream_server.tools.client import open_ws, push_frames, ws_url

FRAME_S = 0.1


def synthetic_audio(seconds: float, rate: int, seed: int) -> np.ndarray:
    """``(frames, 1)`` float32: random chords with decaying envelopes and noise hits."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    out = np.zeros_like(t)
    for start in np.arange(0.0, seconds, 0.5):
        mask = t >= start
        local = t[mask] - start
        f0 = 110.0 * 2 ** (rng.integers(0, 24) / 12)
        env = np.exp(-3 * local)
        out[mask] += sum(0.1 * env * np.sin(2 * np.pi * f0 * k * local) for k in (1, 1.5, 2))
        out[mask] += 0.03 * np.exp(-25 * local) * rng.standard_normal(local.size)
    return np.clip(out, -1, 1).astype(np.float32)[:, None]


@dataclass
class BenchResult:
    streams: int
    seconds: float
    speed: float
    wall_s: float
    computed: int
    skipped: int
    latencies_ms: list[float]
    batch_sizes: dict[str, float]
    device: str
    model: str

    def to_json(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "model": self.model,
            "device": self.device,
            "streams": self.streams,
            "audio_s_per_stream": self.seconds,
            "speed_x_realtime": self.speed,
            "wall_s": round(self.wall_s, 2),
            "windows_computed": self.computed,
            "windows_skipped": self.skipped,
            "windows_per_s": round(self.computed / self.wall_s, 1),
            "mean_batch_size": round(
                self.batch_sizes["sum"] / max(1, self.batch_sizes["count"]), 2
            ),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
            "latency_ms_max": round(float(lat.max()), 1),
        }


async def _run(
    config: Config,
    model: LoadedModel,
    streams: int,
    seconds: float,
    speed: float,
    token: str | None,
) -> BenchResult:
    rate = 44100
    step = round(FRAME_S * rate)
    # Made up front: the server shares this event loop and must not wait on the benchmark.
    audio = [synthetic_audio(seconds, rate, seed=i) for i in range(streams)]
    async with running_server(config, model=model) as server:
        latencies: list[float] = []
        ended: list[dict[str, Any]] = []

        async def subscribe(ws: ClientConnection) -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "genre.update":
                    latencies.append(message["latency_ms"])
                elif message["type"] == "stream.ended":
                    ended.append(message)
                    if len(ended) == streams:
                        return

        async def one(i: int) -> None:
            frames = (audio[i][j : j + step] for j in range(0, len(audio[i]), step))
            await push_frames(
                frames,
                server=server.ws_url,
                sample_rate=rate,
                channels=1,
                name=f"bench-{i}",
                pace="realtime",
                speed=speed,
                token=token,
            )

        updates = ws_url(server.ws_url, "/ws/updates")
        async with open_ws(updates, token=token, scope=READ) as ws:
            subscriber = asyncio.create_task(subscribe(ws))
            t0 = time.perf_counter()
            try:
                await asyncio.gather(*(one(i) for i in range(streams)))
                await asyncio.wait_for(subscriber, 60)
            finally:
                subscriber.cancel()
            wall = time.perf_counter() - t0
        metrics = server.service.metrics
        hist = {
            s.name.rsplit("_", 1)[-1]: s.value
            for family in metrics.batch_size.collect()
            for s in family.samples
            if s.name.endswith(("_sum", "_count"))
        }
        assert server.service.runner is not None
        return BenchResult(
            streams=streams,
            seconds=seconds,
            speed=speed,
            wall_s=wall,
            computed=sum(m["windows_computed"] for m in ended),
            skipped=sum(m["windows_skipped"] for m in ended),
            latencies_ms=latencies,
            batch_sizes=hist,
            device=str(server.service.runner.device),
            model=model.source,
        )


def run_bench(
    config: Config, *, streams: int, seconds: float, speed: float, token: str | None = None
) -> BenchResult:
    """Run the benchmark (see the module docstring) and return its figures: ``streams`` streams
    of ``seconds`` seconds of audio each, sent at ``speed`` times real time; ``token`` for a
    server that requires one (``None``: ``$GENRECAST_TOKEN``).

    Raises:
        ClientError: the server refused the token (or wants one).
    """
    model = load_configured_model(config)
    with tempfile.TemporaryDirectory() as tmp:
        # the benchmark measures throughput: the stream limit must not turn streams away
        server = replace(
            config.server,
            port=0,
            log_level="warning",
            max_streams=max(config.server.max_streams, streams),
            max_streams_per_client=max(config.server.max_streams_per_client, streams),
        )
        storage = replace(config.storage, database=str(Path(tmp) / "bench.db"))
        cfg = config.replace(server=server, storage=storage)
        return asyncio.run(_run(cfg, model, streams, seconds, speed, token))
