"""A server on a real loopback port, driven by real WebSocket and HTTP clients: the shared steps."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from stream_server.config import Config
from stream_server.inference.model import LoadedModel
from stream_server.messages import parse_server_message
from stream_server.serve.auth import TOKEN_ENV
from stream_server.serve.server import RunningServer, running_server
from tests.helpers.audio import to_s16le
from tests.helpers.constants import TIMEOUT_S

#: The rate (Hz) of the audio these helpers send, and the length of one frame, in seconds.
RATE = 44100
FRAME_S = 0.1

#: The tokens of :func:`install_tokens`, by scope: every scope, read only, ingest only.
ALL = "every-scope-token-0123456789"
READER = "reader-token-0123456789abcdef"
FEEDER = "ingest-token-0123456789abcdef"

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], limit_s: float = 6 * TIMEOUT_S) -> T:
    """Run ``coro`` to its end in a new event loop; it fails after ``limit_s`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit_s))


def install_tokens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[str]]:
    """Tokens for a test server: ``GENRECAST_TOKEN`` = :data:`ALL` (every scope), :data:`READER`
    (read) in a file in ``tmp_path``, :data:`FEEDER` (ingest) in ``$FEEDER_TOKEN``. Returns the
    ``[auth]`` table that names the last two."""
    monkeypatch.setenv(TOKEN_ENV, ALL)
    monkeypatch.setenv("FEEDER_TOKEN", FEEDER)
    reader = tmp_path / "reader.token"
    reader.write_text(READER + "\n")
    return {"read_tokens": [f"file:{reader}"], "ingest_tokens": ["env:FEEDER_TOKEN"]}


@contextlib.asynccontextmanager
async def serving(
    config: Config, model: LoadedModel | None = None, **client: Any
) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    """A server on loopback (``model``, else the one ``config`` names) and an HTTP client of
    it that sends no token and ignores proxy settings of the environment; ``client``: more
    keyword arguments of :class:`httpx.AsyncClient` (``timeout=``)."""
    async with (
        running_server(config, model=model) as server,
        httpx.AsyncClient(base_url=server.http_url, trust_env=False, **client) as http,
    ):
        yield server, http


@contextlib.asynccontextmanager
async def ws(server: RunningServer, path: str) -> AsyncIterator[ClientConnection]:
    async with connect(server.ws_url + path, compression=None, proxy=None) as conn:
        yield conn


@contextlib.asynccontextmanager
async def updates(server: RunningServer, stream_id: str) -> AsyncIterator[ClientConnection]:
    """``/ws/updates`` of one stream, from its first update on."""
    async with ws(server, f"/ws/updates?stream_id={stream_id}&since=0") as conn:
        yield conn


async def next_message(
    conn: ClientConnection, wanted: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The next server message that is ``wanted``, each checked by the message parser; the
    others are skipped."""
    while True:
        message: dict[str, Any] = dict(
            parse_server_message(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
        )
        if wanted(message):
            return message


def of_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == kind


async def stream_info(http: httpx.AsyncClient, stream_id: str) -> dict[str, Any]:
    """The entry of ``GET /streams`` for one stream."""
    streams = (await http.get("/streams")).json()["streams"]
    (info,) = [s for s in streams if s["stream_id"] == stream_id]
    return dict(info)


async def ended_info(http: httpx.AsyncClient, stream_id: str) -> dict[str, Any]:
    """Poll ``GET /streams`` every 50 ms, up to TIMEOUT_S seconds, until the stream has ended
    (it lists its final ``reason``); its entry."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        info = await stream_info(http, stream_id)
        if "reason" in info:
            return info
        assert asyncio.get_running_loop().time() < deadline, f"{stream_id} has not ended: {info}"
        await asyncio.sleep(0.05)


def pull_config(make_config: Callable[..., Config], **sources: Any) -> Config:
    """A config for pulling from a test's own servers, all on loopback (a LAN, to the source
    policy): the untrained model, short windows, a 3 s stall, fast reconnects; ``sources``:
    more ``[sources]`` keys."""
    return make_config(
        model={"path": "untrained"},
        engine={"window_s": 2.0, "hop_s": 0.5},
        sources={
            "stall_s": 3.0,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 0.5,
            "allow_private_addresses": True,
            **sources,
        },
    )


async def recv_json(conn: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
    message: dict[str, Any] = json.loads(raw)
    return message


async def start_stream(
    conn: ClientConnection, name: str = "test", rate: int = RATE, channels: int = 2
) -> str:
    start = {"type": "start", "name": name, "sample_rate": rate, "channels": channels}
    await conn.send(json.dumps({**start, "format": "s16le"}))
    reply = await recv_json(conn)
    assert reply["type"] == "stream.started", reply
    stream_id: str = reply["stream_id"]
    return stream_id


async def send_audio(
    conn: ClientConnection, audio: np.ndarray, *, pace: float | None = None
) -> None:
    """Send ``(frames, channels)`` audio in 0.1 s frames; ``pace``: seconds between frames."""
    step = round(FRAME_S * RATE)
    for i in range(0, len(audio), step):
        await conn.send(to_s16le(audio[i : i + step]))
        if pace is not None:
            await asyncio.sleep(pace)


async def stop_stream(conn: ClientConnection) -> dict[str, Any]:
    await conn.send(json.dumps({"type": "stop"}))
    reply = await recv_json(conn)
    assert reply["type"] == "stream.ended", reply
    return reply


async def collect_until_end(conn: ClientConnection, stream_id: str) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await recv_json(conn)
        messages.append(message)
        if message["type"] == "stream.ended" and message["stream_id"] == stream_id:
            return messages


def expected_windows(seconds: float, window_s: float, hop_s: float) -> int:
    return int((seconds - window_s) // hop_s) + 1


async def get_metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    text = (await client.get("/metrics")).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


async def server_metrics(server: RunningServer) -> dict[str, float]:
    """:func:`get_metrics` of ``server`` through a client of its own."""
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        return await get_metrics(http)


async def stream_ids(http: httpx.AsyncClient) -> set[str]:
    """The ids ``GET /streams`` lists."""
    reply = await http.get("/streams")
    assert reply.status_code == 200, reply.text
    return {stream["stream_id"] for stream in reply.json()["streams"]}


async def expect_rejection(
    server: RunningServer, send: list[str | bytes], code: str, close_code: int
) -> str:
    async with ws(server, "/ws/ingest") as conn:
        for item in send:
            await conn.send(item)
        message = None
        with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012 (read until the close)
            while True:
                candidate = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
                if candidate["type"] == "error":
                    message = candidate
    assert message is not None, "no error message before the close"
    assert message["code"] == code, message
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == close_code
    text: str = message["message"]
    return text


def start(**fields: Any) -> str:
    base = {"type": "start", "sample_rate": RATE, "channels": 2, "format": "s16le"}
    return json.dumps({**base, **fields})
