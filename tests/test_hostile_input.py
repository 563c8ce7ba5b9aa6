"""Hostile input on a real loopback server: every bad string, number or file is refused with a
clear 4xx (or an error message and a close code) before anything is registered, and the server
carries on for everyone else."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from stream_server.config import Config
from stream_server.errors import ProtocolError
from stream_server.inference.model import LoadedModel
from stream_server.messages import check_text, parse_client_message, parse_stream_request
from stream_server.serve.server import RunningServer, running_server
from tests.helpers.audio import music
from tests.helpers.live import (
    RATE,
    collect_until_end,
    expect_rejection,
    get_metrics,
    recv_json,
    run,
    send_audio,
    server_metrics,
    serving,
    start,
    start_stream,
    stop_stream,
    stream_ids,
    ws,
)

#: A lone surrogate as JSON writes it: valid JSON, but no UTF-8 (or SQLite) can carry it.
SURROGATE_JSON = '"x\\ud800"'
#: An integer of 5000 digits: beyond what Python's JSON parser converts.
HUGE_INT = "9" * 5000


# -- the pure checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("x\ud800", "lone surrogate (U+D800) at position 1"),
        ("a\nb", "control character (U+000A)"),
        ("a\x00", "control character (U+0000)"),
        ("a\x85", "control character (U+0085)"),
        ("a\u2028b", "control character (U+2028)"),
        ("x" * 201, "at most 200 characters, got 201"),
        (5, "must be a string, got int"),
    ],
)
def test_check_text_refuses_what_cannot_be_stored_or_logged(value: object, needle: str) -> None:
    with pytest.raises(ProtocolError, match="'name'") as raised:
        check_text(value, "name", 200)
    assert needle in str(raised.value)
    assert raised.value.code == "invalid_text" and raised.value.close_code == 1007


def test_check_text_keeps_names_people_use() -> None:
    for name in ("Radio Paradise: Main Mix", "Ö1 Klassik", "ラジオ", "🎷 jazz", ""):
        assert check_text(name, "name", 200) == name


def test_huge_integers_and_bad_strings_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="invalid JSON") as raised:
        parse_client_message(f'{{"type": "start", "sample_rate": {HUGE_INT}, "channels": 1}}')
    assert raised.value.code == "invalid_json"
    with pytest.raises(ProtocolError, match="lone surrogate"):
        parse_client_message(
            f'{{"type": "start", "sample_rate": 8000, "channels": 1, "name": {SURROGATE_JSON}}}'
        )
    with pytest.raises(ProtocolError, match="'url'"):
        parse_stream_request(f'{{"url": {SURROGATE_JSON}}}')
    with pytest.raises(ProtocolError, match="'url' must be a non-empty"):
        parse_stream_request('{"url": "   "}')
    with pytest.raises(ProtocolError, match="invalid JSON"):
        parse_stream_request(f'{{"url": "http://example.com/", "name": {HUGE_INT}}}')
    assert parse_stream_request('{"url": " http://example.com/a.mp3 "}') == {
        "url": "http://example.com/a.mp3"
    }


# -- on a real server ----------------------------------------------------------------------------


def odd_wav() -> bytes:
    """A well-formed WAV whose format tag (0x1234) names no codec FFmpeg knows."""
    data = b"\x00\x01" * 8000
    fmt = struct.pack("<HHIIHH", 0x1234, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def refused(reply: httpx.Response, status: int, needle: str) -> None:
    assert reply.status_code == status, reply.text
    text = reply.json()["error"]
    assert needle in text, text
    assert "Traceback" not in text


def test_bad_names_never_leave_a_stream_behind_nor_lock_the_server_out(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """A lone surrogate in a name used to be registered, then fail in the store: a stream whose
    id nobody got, ``GET /streams`` answering 500, and ``max_streams`` of them locking everyone
    out. Now every such start is refused before anything exists."""
    max_streams = 4

    async def scenario() -> None:
        config = make_config(server={"max_streams": max_streams})
        async with serving(config, tiny_model) as (server, http):
            async with ws(server, "/ws/updates") as sub, ws(server, "/ws/ingest") as healthy:
                healthy_id = await start_stream(healthy, name="healthy")
                audio = music(4.0, RATE)
                await send_audio(healthy, audio[: len(audio) // 2])
                bad_start = start(name="PLACEHOLDER").replace('"PLACEHOLDER"', SURROGATE_JSON)
                for _ in range(3 * max_streams):
                    text = await expect_rejection(server, [bad_start], "invalid_text", 1007)
                    assert "lone surrogate" in text
                await expect_rejection(
                    server, [start(name="a\nfake log line")], "invalid_text", 1007
                )
                huge = start().replace(f'"sample_rate": {RATE}', f'"sample_rate": {HUGE_INT}')
                await expect_rejection(server, [huge], "invalid_json", 1007)
                for body in (
                    f'{{"url": "http://example.com/a.mp3", "name": {SURROGATE_JSON}}}',
                    '{"url": "http://example.com/\\ud800.mp3"}',
                    f'{{"url": "http://example.com/a.mp3", "name": {HUGE_INT}}}',
                    '{"url": "http://example.com/a.mp3\\nforged log line"}',
                ):
                    reply = await http.post(
                        "/streams", content=body, headers={"content-type": "application/json"}
                    )
                    assert reply.status_code == 400, reply.text
                    assert "Traceback" not in reply.text
                # nothing half-created: the listing works and holds only the healthy stream
                assert await stream_ids(http) == {healthy_id}
                assert set(server.service.streams) == {healthy_id}
                # every slot but the healthy one is still free
                async with ws(server, "/ws/ingest") as a, ws(server, "/ws/ingest") as b:
                    others = [await start_stream(a, name="a"), await start_stream(b, name="b")]
                    assert await stream_ids(http) >= {healthy_id, *others}
                    await stop_stream(a)
                    await stop_stream(b)
                await send_audio(healthy, audio[len(audio) // 2 :])
                ended = await stop_stream(healthy)
                assert ended["windows_computed"] >= 1
                seen = await collect_until_end(sub, healthy_id)
                started = [m["stream_id"] for m in seen if m["type"] == "stream.started"]
                assert set(started) <= {healthy_id, *others}  # no refused stream was announced
                metrics = await get_metrics(http)
            assert metrics["genrecast_errors_total{kind=invalid_text}"] == 3 * max_streams + 1
            assert metrics["genrecast_active_streams"] == 0

    run(scenario())


def test_a_stream_the_store_refuses_is_never_registered(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """Whatever the store raises while a stream is created, the stream does not exist after."""

    async def scenario() -> None:
        async with running_server(make_config(), model=tiny_model) as server:
            store = server.service.store
            assert store is not None
            real_add = store.add_stream

            def failing_add(record: Any) -> None:
                raise OSError("disk full")

            store.add_stream = failing_add  # type: ignore[method-assign]
            text = await expect_rejection(server, [start(name="x")], "storage", 1011)
            assert "could not be stored" in text and "disk full" not in text
            assert not server.service.streams
            assert server.service.smoothing is not None
            assert server.service.smoothing.in_use == 0  # its smoothing slot went back
            store.add_stream = real_add  # type: ignore[method-assign]
            async with ws(server, "/ws/ingest") as conn:
                await start_stream(conn, name="after")
                assert server.service.smoothing.in_use == 1
                await stop_stream(conn)
            assert server.service.smoothing.in_use == 0

    run(scenario())


async def offer(http: httpx.AsyncClient, body: dict[str, Any] | bytes) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post(
        "/webrtc/offer", content=content, headers={"content-type": "application/json"}
    )


#: An audio offer as a browser writes it, without its DTLS fingerprint.
NO_FINGERPRINT = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)
#: The same with a fingerprint, for malformed variants that reach the SDP parser.
WITH_FINGERPRINT = NO_FINGERPRINT + "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"


def test_bad_uploads_and_offers_get_4xx_not_500(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    pytest.importorskip("aiortc", reason="the webrtc extra is not installed")

    async def scenario() -> None:
        async with serving(make_config(), tiny_model) as (server, http):
            reply = await http.post(
                "/classify", content=odd_wav(), headers={"content-type": "audio/wav"}
            )
            refused(reply, 415, "no audio stream that can be decoded")

            refused(await offer(http, {"type": "offer", "sdp": NO_FINGERPRINT}), 400, "fingerprint")
            surrogate = (
                b'{"type": "offer", "sdp": "' + WITH_FINGERPRINT.encode("unicode_escape") + b'", '
                b'"name": ' + SURROGATE_JSON.encode() + b"}"
            )
            refused(await offer(http, surrogate), 400, "lone surrogate")
            for broken in (
                WITH_FINGERPRINT.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111"),
                WITH_FINGERPRINT.replace("m=audio 9 ", "m=audio x "),
                WITH_FINGERPRINT.replace("c=IN IP4 0.0.0.0", "c=IN IP4"),
                WITH_FINGERPRINT.replace("a=fingerprint:sha-256 ", "a=fingerprint:"),
                WITH_FINGERPRINT.replace("a=setup:actpass", "a=setup:"),
                WITH_FINGERPRINT + "a=candidate:1 1 udp notanumber 127.0.0.1 9 typ host\r\n",
                WITH_FINGERPRINT.replace("a=mid:0", "a=ssrc:x"),
            ):
                reply = await offer(http, {"type": "offer", "sdp": broken})
                assert reply.status_code == 400, (broken, reply.text)
            assert not server.service.streams
            # a good request still works
            async with ws(server, "/ws/ingest") as conn:
                await start_stream(conn, name="still here")
                await stop_stream(conn)
            await check_no_500(server)

    run(scenario())


async def check_no_500(server: RunningServer) -> None:
    metrics = await server_metrics(server)
    assert not any(
        k.startswith("genrecast_errors_total{kind=upload}") and v for k, v in metrics.items()
    )


def test_a_closed_ingest_socket_gets_a_reason_not_1006(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """A 5000-digit number used to drop the connection with no message (close code 1006)."""

    async def scenario() -> None:
        async with running_server(make_config(), model=tiny_model) as server:
            async with ws(server, "/ws/ingest") as conn:
                await conn.send(f'{{"type": "start", "channels": {HUGE_INT}}}')
                message = await recv_json(conn)
                assert message["type"] == "error" and message["code"] == "invalid_json"
                with pytest.raises(ConnectionClosed) as closed:
                    await recv_json(conn)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007

    run(scenario())
