"""Slow or silent HTTP clients against a real server on loopback: a request head is due within
``server.header_timeout_s`` of connecting (or of a further request's first byte), trickling does
not extend the deadline, and well-behaved kept-alive and WebSocket clients are left alone."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import connect

from stream_server.config import Config, config_from_dict
from stream_server.errors import ConfigError
from stream_server.inference.model import LoadedModel
from stream_server.serve.http_timeouts import header_timeout_protocol
from stream_server.serve.server import KEEP_ALIVE_S, RunningServer, running_server
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import run

#: The request-head deadline the tests configure, in seconds.
HEAD_S = 1.0
#: Room, in seconds, for a loaded machine on top of ``HEAD_S`` before a closure is overdue.
SLACK_S = TIMEOUT_S / 2


def slow_config(make_config: Callable[..., Config]) -> Config:
    return make_config(server={"header_timeout_s": HEAD_S})


def request(server: RunningServer, path: str = "/health") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a ``content-length``: its status line and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    status, *fields = head.split(b"\r\n")
    length = 0
    for line in fields:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT_S)
    return status, body


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := await reader.read(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.mark.parametrize(
    ("value", "needle"),
    [(0, "> 0"), (-1.0, "> 0"), (math.inf, "> 0"), (math.nan, "> 0"), ("10", "expected a number")],
)
def test_header_timeout_must_be_a_positive_number_of_seconds(value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"server": {"header_timeout_s": value}})
    assert info.value.key == "server.header_timeout_s"
    assert needle in str(info.value)


def test_header_timeout_defaults_to_10_s() -> None:
    assert config_from_dict({}).server.header_timeout_s == 10.0
    assert header_timeout_protocol(2.5).header_timeout_s == 2.5
    with pytest.raises(ValueError, match="> 0"):
        header_timeout_protocol(0.0)


def test_half_sent_and_silent_connections_are_closed_while_others_are_served(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        async with running_server(slow_config(make_config), model=tiny_model) as server:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            half = [await asyncio.open_connection(server.host, server.port) for _ in range(200)]
            silent = [await asyncio.open_connection(server.host, server.port) for _ in range(20)]
            for _, writer in half:
                writer.write(b"GET /health HT")
            await asyncio.gather(*(writer.drain() for _, writer in half))

            async with httpx.AsyncClient(base_url=server.http_url, timeout=TIMEOUT_S) as http:
                asked = time.monotonic()
                reply = await http.get("/health")
                answered_s = time.monotonic() - asked
            assert reply.status_code == 200
            assert answered_s < 5.0, f"/health took {answered_s:.1f} s during the flood"

            try:
                got = await asyncio.wait_for(
                    asyncio.gather(*(until_closed(reader) for reader, _ in half + silent)),
                    max(0.0, t0 + HEAD_S + SLACK_S - loop.time()),
                )
            except TimeoutError:
                pytest.fail(f"connections still open {HEAD_S + SLACK_S:g} s after connecting")
            finally:
                for _, writer in half + silent:
                    writer.close()
            assert all(g.startswith(b"HTTP/1.1 408 ") for g in got[: len(half)]), got[0]
            assert got[len(half) :] == [b""] * len(silent)  # nothing sent: closed, no answer

    run(scenario())


@pytest.mark.parametrize("kept_alive", [False, True], ids=["first-request", "kept-alive"])
def test_a_trickled_head_is_cut_at_the_deadline(
    make_config: Callable[..., Config], tiny_model: LoadedModel, kept_alive: bool
) -> None:
    async def scenario() -> None:
        async with running_server(slow_config(make_config), model=tiny_model) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            try:
                if kept_alive:  # one whole request first: the next head has its own deadline
                    writer.write(request(server))
                    status, _ = await read_response(reader)
                    assert status.startswith(b"HTTP/1.1 200 ")
                head = request(server)[:-2] + b"x-padding: " + b"a" * 400
                started = time.monotonic()
                received = b""
                for byte in head:  # one byte every 0.2 s, for longer than the deadline
                    if time.monotonic() - started > HEAD_S + SLACK_S:
                        pytest.fail("a trickling client was never cut")
                    try:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        chunk = await asyncio.wait_for(reader.read(4096), 0.2)
                    except TimeoutError:
                        continue
                    except (ConnectionResetError, BrokenPipeError):
                        break
                    received = chunk  # an answer, or b"" for a close: cut either way
                    break
                else:
                    pytest.fail("the whole padded head was trickled without a cut")
                cut_s = time.monotonic() - started
                received += await asyncio.wait_for(until_closed(reader), TIMEOUT_S)
            finally:
                writer.close()
            assert received.startswith(b"HTTP/1.1 408 "), received
            assert cut_s >= HEAD_S / 2, f"cut after {cut_s:.2f} s, before the deadline"

    run(scenario())


def test_kept_alive_and_websocket_clients_outlive_the_deadline(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """Requests 2.5 s apart on one connection (longer than the head deadline, shorter than the
    keep-alive), each head sent in two parts within the deadline; and an idle subscriber."""

    async def scenario() -> None:
        async with running_server(slow_config(make_config), model=tiny_model) as server:
            subscriber = await connect(server.ws_url + "/ws/updates", compression=None, proxy=None)
            reader, writer = await asyncio.open_connection(server.host, server.port)
            try:
                for i in range(3):
                    if i:
                        await asyncio.sleep(2.5 * HEAD_S)
                    whole = request(server)
                    writer.write(whole[:10])
                    await writer.drain()
                    await asyncio.sleep(0.3 * HEAD_S)
                    writer.write(whole[10:])
                    status, body = await read_response(reader)
                    assert status.startswith(b"HTTP/1.1 200 "), (i, status, body)
                pong = await subscriber.ping()
                await asyncio.wait_for(pong, TIMEOUT_S)
            finally:
                writer.close()
                await subscriber.close()

    run(scenario())


def test_a_kept_alive_connection_outlives_an_http_clients_idle_expiry(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """httpx keeps an idle connection 5 s (its default ``keepalive_expiry``) and then sends on
    it: the server must still be listening there, or a request 5 s after the previous one races
    the server's close and fails with a read error."""
    client_expiry_s = httpx.Limits().keepalive_expiry
    assert client_expiry_s is not None and client_expiry_s < KEEP_ALIVE_S

    async def scenario() -> None:
        async with running_server(make_config(), model=tiny_model) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            try:
                for i in range(2):
                    if i:
                        await asyncio.sleep(client_expiry_s + 1.0)
                    writer.write(request(server))
                    await writer.drain()
                    status, _ = await read_response(reader)
                    assert status.startswith(b"HTTP/1.1 200 "), (i, status)
            finally:
                writer.close()

    run(scenario())
