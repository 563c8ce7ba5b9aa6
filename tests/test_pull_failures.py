"""Pulled sources that fail say why: the reason formatter directly, then a real server pulling
from loopback sites that answer 404, ports nobody listens on, names that do not resolve, web
pages, and a station that worked, dropped and came back."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av.error
import httpcore
import httpx
import pytest

from stream_server.config import Config
from stream_server.errors import DecodeError, SourceRefused, SourceStalled
from stream_server.sources.puller import ReconnectPolicy, _http_error, describe_failure
from tests.helpers.audio import encode_audio, music
from tests.helpers.cli import free_port
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import (
    ended_info,
    next_message,
    of_type,
    pull_config,
    run,
    serving,
    stream_info,
    updates,
)
from tests.helpers.radio import EndlessMp3, mp3_file
from tests.helpers.site import Route, Site

# -- the reason formatter (pure) -----------------------------------------------------------------

REQUEST = httpx.Request("GET", "http://radio.example/live?token=secret")
#: What a reason must never show: errno numbers, exception class names.
UNREADABLE = re.compile(r"Errno|\d{6,}|[A-Z][a-z]+(Error|Exception|Timeout)\b|ConnectError")


def chained(*excs: BaseException) -> BaseException:
    """``excs[0]`` raised from ``excs[1]``, raised from ``excs[2]``, ...: as Python chains them."""
    for outer, inner in itertools.pairwise(excs):
        outer.__cause__ = inner
    return excs[0]


def invalid_data() -> av.error.InvalidDataError:
    return av.error.InvalidDataError(
        1094995529, "Invalid data found when processing input", "http://radio.example/live"
    )


@pytest.mark.parametrize(
    ("exc", "context", "expected"),
    [
        (  # what the puller raises for an error status
            DecodeError("HTTP 404 Not Found from http://radio.example/live"),
            {},
            "HTTP 404 Not Found from http://radio.example/live",
        ),
        (  # httpx's error from httpcore's, which holds the socket's (re-raised ``from None``)
            chained(
                httpx.ConnectError("[Errno 111] Connection refused", request=REQUEST),
                httpcore.ConnectError(ConnectionRefusedError(111, "Connection refused")),
            ),
            {},
            "connection refused by radio.example:80",
        ),
        (  # no request named (an ICY server asked by hand): the URL pulled says where
            chained(
                httpcore.ConnectError("[Errno 111] Connection refused"),
                ConnectionRefusedError(111, "Connection refused"),
            ),
            {"url": "http://[::1]:8000/stream"},
            "connection refused by [::1]:8000",
        ),
        (
            SourceRefused(
                "'nosuch.invalid' does not resolve", transient=True, host="nosuch.invalid", port=80
            ),
            {"url": "http://nosuch.invalid/live"},
            "host not found: nosuch.invalid",
        ),
        (
            socket.gaierror(-2, "Name or service not known"),
            {"url": "https://nosuch.invalid/live"},
            "host not found: nosuch.invalid",
        ),
        (SourceRefused("a loopback address"), {}, SourceRefused.MESSAGE),
        (
            httpx.ConnectTimeout("timed out", request=REQUEST),
            {"open_timeout_s": 10.0},
            "no answer from radio.example:80 within 10 s",
        ),
        (
            chained(httpx.ReadTimeout("timed out", request=REQUEST), TimeoutError("timed out")),
            {"stall_s": 10.0},
            "no audio for 10 s",
        ),
        (SourceStalled("no audio for 3 s"), {"stall_s": 3.0}, "no audio for 3 s"),
        (
            chained(
                httpx.ReadError("[Errno 104] Connection reset by peer", request=REQUEST),
                ConnectionResetError(104, "Connection reset by peer"),
            ),
            {},
            "connection reset by radio.example:80",
        ),
        (
            httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=REQUEST
            ),
            {},
            "radio.example:80 closed the connection",
        ),
        (
            chained(
                httpx.ConnectError("[Errno 101] Network is unreachable", request=REQUEST),
                OSError(101, "Network is unreachable"),
            ),
            {},
            "cannot connect to radio.example:80: network is unreachable",
        ),
        (  # a web page where the audio should be
            chained(
                DecodeError("cannot open audio source 'x': [Errno 1094995529] ..."), invalid_data()
            ),
            {"content_type": "text/html; charset=utf-8"},
            "not an audio stream (text/html)",
        ),
        (
            chained(
                DecodeError("cannot open audio source 'x': [Errno 1094995529] ..."), invalid_data()
            ),
            {"content_type": "audio/mpeg"},
            "cannot decode the audio (audio/mpeg): invalid data found when processing input",
        ),
        (
            DecodeError("audio source 'http://radio.example/live' has no audio stream"),
            {"content_type": "application/json"},
            "not an audio stream (application/json)",
        ),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
            {"url": "https://radio.example/live"},
            "TLS with radio.example:443 failed: wrong version number",
        ),
        (RuntimeError("boom"), {}, "unexpected error: boom"),
        (ValueError(), {}, "unexpected error"),
    ],
)
def test_a_failure_says_what_happened_and_where_in_words(
    exc: BaseException, context: dict[str, Any], expected: str
) -> None:
    reason = describe_failure(exc, **context)
    assert reason == expected
    assert UNREADABLE.search(reason) is None, reason
    assert "secret" not in reason  # a query string is never shown


def test_an_unverified_certificate_names_the_host_and_why() -> None:
    cert = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify")
    cert.verify_message = "self-signed certificate"
    reason = describe_failure(
        chained(httpx.ConnectError(str(cert), request=REQUEST), cert), url=str(REQUEST.url)
    )
    assert reason == "the TLS certificate of radio.example is not accepted: self-signed certificate"


def test_a_source_that_never_delivered_audio_gets_first_attempts_tries() -> None:
    once = ReconnectPolicy(0.5, 4.0, max_reconnects=10)
    assert once.delay(1, went_live=False) is None  # the first failure ends it
    assert once.delay(1) == 0.5  # one that went live is retried
    three = ReconnectPolicy(0.5, 4.0, max_reconnects=10, first_attempts=3)
    assert [three.delay(n, went_live=False) for n in (1, 2, 3)] == [0.5, 1.0, None]


# -- a real server pulling from loopback --------------------------------------------------------


def test_a_source_that_never_worked_fails_at_once_saying_why(
    make_config: Callable[..., Config],
) -> None:
    page = Route(200, (("Content-Type", "text/html; charset=utf-8"),), b"<html>" * 2000)
    dead_port = free_port()

    async def scenario(site: Site) -> None:
        async with serving(pull_config(make_config)) as (server, http):
            dead = f"127.0.0.1:{dead_port}"
            cases = {
                f"{site.base}/missing.mp3": f"HTTP 404 Not Found from {site.base}/missing.mp3",
                f"http://{dead}/live": f"connection refused by {dead}",
                "http://nosuch.invalid/live": "host not found: nosuch.invalid",
                f"{site.base}/page": "not an audio stream (text/html)",
            }
            for url, reason in cases.items():
                t0 = time.monotonic()
                reply = await http.post("/streams", json={"url": url})
                assert reply.status_code == 201, (url, reply.text)
                stream_id = reply.json()["stream_id"]
                async with updates(server, stream_id) as conn:
                    ended = await next_message(conn, of_type("stream.ended"))
                assert ended["reason"] == reason, url
                info = await ended_info(http, stream_id)
                assert time.monotonic() - t0 < 5.0, url  # at once: no retries, no stall
                assert info["state"] == "failed", info
                assert info["reason"] == info["last_error"] == reason, info
                assert isinstance(info["last_error_at"], float), info
                assert info["reconnects"] == 0, info
                assert info["summary"]["windows"] == 0 and info["summary"]["genre"] is None
            assert not server.service.pullers and not server.service.streams
        assert site.hits == ["/missing.mp3", "/page"]  # each asked once

    with Site({"/page": page}) as site:
        run(scenario(site), limit_s=3 * TIMEOUT_S)


def test_with_the_default_policy_loopback_and_unknown_names_are_refused_at_once(
    make_config: Callable[..., Config],
) -> None:
    """A server that pulls only public hosts answers 403, one message, for a loopback address
    and for a name that does not resolve alike (which names resolve to private addresses is
    not told); no stream is made."""
    config = make_config(model={"path": "untrained"})

    async def scenario() -> None:
        async with serving(config) as (server, http):
            for url in (f"http://127.0.0.1:{free_port()}/live", "http://nosuch.invalid/live"):
                reply = await http.post("/streams", json={"url": url})
                assert reply.status_code == 403, reply.text
                assert reply.json() == {
                    "error": SourceRefused.MESSAGE,
                    "code": "source_not_allowed",
                }
            assert not server.service.streams
            assert (await http.get("/streams")).json()["streams"] == []

    run(scenario(), limit_s=3 * TIMEOUT_S)


def test_a_station_that_worked_then_dropped_is_retried_and_says_why(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """The station's first answer is four seconds of live audio; then it answers 503 for a
    while; then it redirects to an endless station: the stream reconnects (it never fails:
    ``max_reconnects = 0``), its ``last_error`` says why while it retries and stays once it is
    back."""
    wav = encode_audio(tmp_path / "live.wav", music(4.0, 22050), 22050).read_bytes()
    audio = Route(200, (("Content-Type", "audio/wav"),), wav, length=False)
    down = Route(503, (), b"down for maintenance")
    config = pull_config(make_config, max_reconnects=0)

    async def scenario(site: Site, endless: EndlessMp3) -> None:
        async with serving(config) as (server, http):
            reply = await http.post("/streams", json={"url": f"{site.base}/radio", "name": "fm"})
            assert reply.status_code == 201, reply.text
            stream_id = reply.json()["stream_id"]
            async with updates(server, stream_id) as conn:
                await next_message(conn, of_type("genre.update"))  # it went live
                deadline = time.monotonic() + TIMEOUT_S
                while True:
                    info = await stream_info(http, stream_id)
                    if info["last_error"] and info["last_error"].startswith("HTTP"):
                        break
                    assert time.monotonic() < deadline, info
                    await asyncio.sleep(0.05)
                assert info["state"] == "reconnecting", info
                assert info["last_error"] == f"HTTP 503 Service Unavailable from {site.base}/radio"
                assert time.time() - 10.0 < info["last_error_at"] <= time.time()
                assert "reason" not in info  # not ended
                assert info["summary"]["windows"] > 0, info  # what it was so far
                site.routes["/radio"] = Route(302, (("Location", endless.url),))  # it is back
                await next_message(
                    conn,
                    lambda m: (
                        m["type"] == "genre.update" and m["stream_time_s"] > info["stream_time_s"]
                    ),
                )
                back = await stream_info(http, stream_id)
                assert back["state"] == "live" and back["reconnects"] >= 2, back
                assert back["last_error"] == info["last_error"], back  # kept after it is back
                await http.delete(f"/streams/{stream_id}")
            ended = await ended_info(http, stream_id)
            assert ended["state"] == "ended" and ended["reason"] == "stopped by request"
            assert ended["last_error"] == info["last_error"]
            assert ended["reconnects"] == back["reconnects"]
        assert site.hits.count("/radio") >= 3

    mp3 = mp3_file(tmp_path, 6.0).read_bytes()
    with Site({"/radio": down}) as site, EndlessMp3(mp3) as endless:
        site.queued["/radio"] = [audio]
        run(scenario(site, endless), limit_s=3 * TIMEOUT_S)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:secret@radio.example/live?key=secret#x", "http://radio.example/live"),
        ("https://radio.example:8443/a/b", "https://radio.example:8443/a/b"),
        ("http://[::1]:8000/live", "http://[::1]:8000/live"),
    ],
)
def test_an_error_status_names_where_without_user_password_or_query(url: str, shown: str) -> None:
    response = httpx.Response(404, request=httpx.Request("GET", url))
    assert _http_error(response) == f"HTTP 404 Not Found from {shown}"


def test_a_listed_source_shows_no_user_password_or_query(
    make_config: Callable[..., Config],
) -> None:
    """Anyone who may list streams sees where a pulled stream comes from, never a secret its
    URL's query may carry: not in its source, its default name, nor its failure's reason. (A URL
    with a user and password is refused at once: the policy takes none.)"""

    async def scenario(site: Site) -> None:
        url = f"{site.base}/missing.mp3?token=secret"
        async with serving(pull_config(make_config)) as (_, http):
            with_user = site.base.replace("http://", "http://user:secret@") + "/missing.mp3"
            assert (await http.post("/streams", json={"url": with_user})).status_code == 403
            reply = await http.post("/streams", json={"url": url})
            assert reply.status_code == 201, reply.text
            created = reply.json()
            info = await ended_info(http, created["stream_id"])
            for entry in (created, info):
                assert entry["source"] == f"{site.base}/missing.mp3?…", entry
                assert entry["name"] == "missing.mp3", entry
            assert info["reason"] == f"HTTP 404 Not Found from {site.base}/missing.mp3", info
            assert "secret" not in (await http.get("/streams")).text
        assert site.hits == ["/missing.mp3?token=secret"]  # the whole URL was pulled

    with Site({}) as site:
        run(scenario(site), limit_s=3 * TIMEOUT_S)
