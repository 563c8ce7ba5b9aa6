"""No client can hold the server's slots: start and idle timeouts, per-client stream limits,
pending WebRTC offers and concurrent uploads are all bounded (real loopback server)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from stream_server.config import Config
from stream_server.inference.model import LoadedModel
from stream_server.serve.server import running_server
from tests.helpers.audio import encode_audio, music, to_s16le
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import (
    RATE,
    expect_rejection,
    get_metrics,
    recv_json,
    run,
    serving,
    start,
    start_stream,
    ws,
)


def test_a_connection_that_never_starts_is_closed(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        config = make_config(server={"start_timeout_s": 0.5})
        async with running_server(config, model=tiny_model) as server:
            t0 = time.monotonic()
            text = await expect_rejection(server, [], "start_timeout", 1008)
            assert "no 'start' message within 0.5 s" in text
            assert time.monotonic() - t0 < TIMEOUT_S
            async with ws(server, "/ws/ingest") as conn:  # a prompt client is unaffected
                await start_stream(conn)

    run(scenario())


def test_an_idle_stream_is_ended_and_its_slot_freed(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        config = make_config(server={"idle_timeout_s": 1.0, "max_streams": 1})
        async with (
            running_server(config, model=tiny_model) as server,
            ws(server, "/ws/updates") as sub,
        ):
            async with ws(server, "/ws/ingest") as idle:
                stream_id = await start_stream(idle, name="idle")
                await idle.send(to_s16le(music(0.2, RATE)))
                ended = await recv_json(idle)
                assert ended["type"] == "stream.ended" and ended["stream_id"] == stream_id
                assert ended["reason"] == "idle: no audio for 1 s"
                with pytest.raises(ConnectionClosed):
                    await recv_json(idle)
            while True:
                message = await recv_json(sub)
                if message["type"] == "stream.ended":
                    assert message["stream_id"] == stream_id
                    break
            async with ws(server, "/ws/ingest") as next_client:  # the only slot is free again
                await start_stream(next_client, name="next")

    run(scenario())


def test_one_client_cannot_take_every_slot(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        config = make_config(server={"max_streams_per_client": 2, "max_streams": 10})
        async with (
            running_server(config, model=tiny_model) as server,
            ws(server, "/ws/ingest") as a,
            ws(server, "/ws/ingest") as b,
        ):
            await start_stream(a, name="a")
            await start_stream(b, name="b")
            text = await expect_rejection(server, [start(name="c")], "busy", 1013)
            assert "this client already has 2 live streams (limit 2)" in text
            assert len(server.service.streams) == 2

    run(scenario())


def test_pending_webrtc_offers_are_bounded(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    pytest.importorskip("aiortc", reason="the webrtc extra is not installed")
    from tests.helpers.webrtc import client_peer, offer_json

    async def scenario() -> None:
        config = make_config(
            webrtc={"max_pending": 2, "connect_timeout_s": 30.0},
            server={"max_streams_per_client": 10},
        )
        async with serving(config, tiny_model) as (server, http):
            peers = [client_peer() for _ in range(3)]
            try:
                replies = []
                for peer in peers:  # offers whose answers are never applied: never connect
                    replies.append(await http.post("/webrtc/offer", json=await offer_json(peer)))
                assert [r.status_code for r in replies] == [200, 200, 503]
                assert "2 WebRTC peers are still connecting (limit 2)" in replies[2].json()["error"]
                assert len(server.service.streams) == 2
            finally:
                for peer in peers:
                    await peer.close()

    run(scenario())


def test_concurrent_uploads_are_bounded(
    make_config: Callable[..., Config], tiny_model: LoadedModel, tmp_path: Path
) -> None:
    wav = encode_audio(tmp_path / "a.wav", music(3.0, RATE, channels=1), RATE).read_bytes()
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:  # holds its slot until released
        yield wav[:1024]
        await release.wait()
        yield wav[1024:]

    async def scenario() -> None:
        config = make_config(upload={"max_concurrent": 1})
        async with serving(config, tiny_model, timeout=TIMEOUT_S) as (_, http):
            headers = {"Content-Type": "audio/wav"}
            first = asyncio.create_task(
                http.post("/classify", content=slow_body(), headers=headers)
            )
            await asyncio.sleep(0.3)
            second = await http.post("/classify", content=wav, headers=headers)
            assert second.status_code == 503 and second.headers["retry-after"] == "2"
            assert "the limit is 1" in second.json()["error"]
            release.set()
            assert (await first).status_code == 200
            third = await http.post("/classify", content=wav, headers=headers)
            assert third.status_code == 200, third.text
            metrics = await get_metrics(http)
            assert metrics["genrecast_uploads_total{result=refused}"] == 1

    run(scenario())


def test_limits_are_config_keys(tmp_path: Path) -> None:
    from stream_server.config import config_from_dict
    from stream_server.errors import ConfigError

    for table, key in (
        ("server", "start_timeout_s"),
        ("server", "idle_timeout_s"),
        ("server", "max_streams_per_client"),
        ("webrtc", "max_pending"),
        ("upload", "max_concurrent"),
    ):
        with pytest.raises(ConfigError) as raised:
            config_from_dict({table: {key: 0}})
        assert raised.value.key == f"{table}.{key}"
    assert json.dumps(config_from_dict({}).server.idle_timeout_s) == "30.0"
