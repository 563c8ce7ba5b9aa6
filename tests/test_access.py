"""Who may use a real server on loopback: tokens and scopes over HTTP and WebSockets, browser
tickets, Host and Origin checks, JSON-only bodies, and no exposure without a token."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from stream_server.config import Config
from stream_server.errors import ConfigError
from stream_server.inference.model import LoadedModel
from stream_server.serve.auth import TOKEN_ENV
from stream_server.serve.server import RunningServer, running_server
from tests.helpers.cli import genrecast
from tests.helpers.fuzz import LogRecorder
from tests.helpers.live import (
    ALL,
    FEEDER,
    READER,
    install_tokens,
    recv_json,
    run,
    serving,
    start,
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ws_status(server: RunningServer, path: str, **kwargs: object) -> int:
    """The HTTP status a WebSocket handshake gets (101 when it opens)."""
    try:
        async with connect(server.ws_url + path, compression=None, proxy=None, **kwargs):  # type: ignore[arg-type]
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[str]]:
    """``GENRECAST_TOKEN`` (every scope), a read token in a file, an ingest token in the env."""
    return install_tokens(monkeypatch, tmp_path)


def test_tokens_and_scopes_on_every_route(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    tokens: dict[str, list[str]],
) -> None:
    async def scenario() -> None:
        async with serving(make_config(auth=tokens), tiny_model) as (server, http):
            recorder.attach()  # after uvicorn configured its loggers
            # open to anyone
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/ready")).status_code == 200
            assert (await http.get("/mic")).status_code == 200
            # read
            for path in ("/streams", "/streams/abc/timeline", "/metrics", "/no-such-page"):
                reply = await http.get(path)
                assert reply.status_code == 401, path
                assert reply.headers["www-authenticate"].startswith("Bearer")
                assert reply.json()["code"] == "unauthorized"
                assert (
                    await http.get(path, headers=bearer("wrong-token-0123456789"))
                ).status_code == 401
                assert (await http.get(path, headers=bearer(READER))).status_code != 401
            assert (await http.get("/streams", headers=bearer(READER))).status_code == 200
            # admin: a read or ingest token is not enough
            for token in (READER, FEEDER):
                reply = await http.delete("/streams/abc", headers=bearer(token))
                assert reply.status_code == 403 and "'admin'" in reply.json()["error"]
                reply = await http.post(
                    "/streams", json={"url": "http://x/"}, headers=bearer(token)
                )
                assert reply.status_code == 403
            assert (await http.delete("/streams/abc", headers=bearer(ALL))).status_code == 404
            # ingest
            for path in ("/classify", "/webrtc/offer"):
                assert (await http.post(path, json={})).status_code == 401
                assert (await http.post(path, json={}, headers=bearer(READER))).status_code == 403
            assert await ws_status(server, "/ws/ingest") == 401
            assert await ws_status(server, "/ws/ingest", additional_headers=bearer(READER)) == 403
            assert await ws_status(server, "/ws/updates") == 401
            async with connect(
                server.ws_url + "/ws/ingest", additional_headers=bearer(FEEDER), compression=None
            ) as conn:
                await conn.send(start(name="fed with a token"))
                assert (await recv_json(conn))["type"] == "stream.started"

    recorder = LogRecorder()
    try:
        run(scenario())
    finally:
        recorder.detach()
    # a refused handshake is the client's error: an access line, not an error in the log
    assert recorder.take_problems() == []


def test_pages_and_the_api_description_are_open_and_show_no_streams(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    tokens: dict[str, list[str]],
) -> None:
    """What shows no stream data needs no token; the landing page counts no stream for a
    stranger (its script asks ``/streams`` with the token of its address), and ``/streams``
    still needs one."""

    async def scenario() -> None:
        async with (
            serving(make_config(auth=tokens), tiny_model) as (server, http),
            connect(
                server.ws_url + "/ws/ingest", additional_headers=bearer(FEEDER), compression=None
            ) as conn,
        ):
            await conn.send(start(name="not for strangers"))
            assert (await recv_json(conn))["type"] == "stream.started"
            for path in ("/", "/docs", "/openapi.json", "/favicon.ico", "/favicon.svg", "/mic"):
                reply = await http.get(path)
                assert reply.status_code == 200, path
            for path in ("/streams", "/streams/abc/timeline", "/metrics"):
                assert (await http.get(path)).status_code == 401, path
            landing = (await http.get("/")).text
            assert '<span id="live-count">…</span>' in landing  # counted by the page, not here
            assert "not for strangers" not in landing
            assert "read token" in landing
            doc = (await http.get("/openapi.json")).json()
            assert doc["paths"]["/streams"]["get"]["security"] == [{"bearer": []}]
            assert doc["paths"]["/"]["get"]["security"] == []
            assert "This server needs a token" in (await http.get("/docs")).text
            # the Host and Origin rules hold for the open pages too
            rebound = await http.get("/", headers={"Host": f"evil.example:{server.port}"})
            assert rebound.status_code == 421
            rebound = await http.get("/openapi.json", headers={"Host": "evil.example"})
            assert rebound.status_code == 421

    run(scenario())


def test_browser_tickets_open_websockets_for_a_while(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    tokens: dict[str, list[str]],
) -> None:
    async def scenario() -> None:
        async with serving(make_config(auth=tokens), tiny_model) as (server, http):
            assert (await http.post("/auth/ticket")).status_code == 401
            reply = await http.post("/auth/ticket", headers=bearer(READER))
            assert reply.status_code == 200
            body = reply.json()
            assert body["scopes"] == ["read"] and body["expires_in_s"] == 60.0
            ticket = body["ticket"]
            assert await ws_status(server, f"/ws/updates?ticket={ticket}") == 101
            assert await ws_status(server, f"/ws/ingest?ticket={ticket}") == 403  # read only
            assert await ws_status(server, f"/ws/updates?ticket={ticket[:-2]}xx") == 401
            # a ticket cannot mint another
            again = await http.post("/auth/ticket", params={"ticket": ticket})
            assert again.status_code == 401

    run(scenario())


def test_metrics_can_be_opened_for_a_scraper(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    tokens: dict[str, list[str]],
) -> None:
    async def scenario() -> None:
        config = make_config(auth={**tokens, "open_metrics": True})
        async with serving(config, tiny_model) as (_, http):
            assert (await http.get("/metrics")).status_code == 200
            assert (await http.get("/streams")).status_code == 401

    run(scenario())


def test_foreign_hosts_origins_and_forms_are_refused_even_without_tokens(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """A loopback server without a token is what DNS rebinding and cross-site pages aim at."""

    async def scenario() -> None:
        async with serving(make_config(), tiny_model) as (server, http):
            assert (await http.get("/streams")).status_code == 200  # open on loopback
            rebound = await http.get("/streams", headers={"Host": f"evil.example:{server.port}"})
            assert rebound.status_code == 421 and rebound.json()["code"] == "unknown_host"
            evil = {"Origin": "https://evil.example"}
            form = await http.post(
                "/streams",
                content=json.dumps({"url": "http://example.com/a.mp3"}),
                headers={**evil, "Content-Type": "text/plain"},
            )
            assert form.status_code == 403 and form.json()["code"] == "origin_not_allowed"
            plain = await http.post(
                "/streams",
                content=json.dumps({"url": "http://example.com/a.mp3"}),
                headers={"Content-Type": "text/plain"},
            )
            assert plain.status_code == 415
            offer = await http.post(
                "/webrtc/offer", content=b"{}", headers={"Content-Type": "text/plain"}
            )
            assert offer.status_code == 415
            upload = await http.post(
                "/classify", content=b"RIFF", headers={**evil, "Content-Type": "audio/wav"}
            )
            assert upload.status_code == 403
            assert (await http.delete("/streams/abc", headers=evil)).status_code == 403
            preflight = await http.options(
                "/streams", headers={**evil, "Access-Control-Request-Method": "POST"}
            )
            assert preflight.status_code == 403
            assert "access-control-allow-origin" not in preflight.headers
            assert await ws_status(server, "/ws/updates", origin="https://evil.example") == 403
            own = f"http://127.0.0.1:{server.port}"
            assert await ws_status(server, "/ws/updates", origin=own) == 101
            assert (await http.get("/streams", headers=evil)).status_code == 200  # reads are safe
            assert server.service.streams == {}

    run(scenario())


def test_listed_origins_get_cors_answers(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        friend = "http://127.0.0.1:8501"
        async with serving(make_config(auth={"origins": [friend]}), tiny_model) as (server, http):
            preflight = await http.options(
                "/streams", headers={"Origin": friend, "Access-Control-Request-Method": "POST"}
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == friend
            assert "authorization" in preflight.headers["access-control-allow-headers"]
            listing = await http.get("/streams", headers={"Origin": friend})
            assert listing.headers["access-control-allow-origin"] == friend
            assert await ws_status(server, "/ws/updates", origin=friend) == 101

    run(scenario())


def test_no_exposure_without_a_token(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)

    async def scenario() -> None:
        with pytest.raises(ConfigError) as raised:
            async with running_server(make_config(server={"host": "0.0.0.0"})):
                pass
        assert raised.value.key == "server.host" and "--insecure" in str(raised.value)

    run(scenario())
    done = genrecast("serve", "--host", "0.0.0.0", "--port", "0", env={TOKEN_ENV: ""})
    assert done.returncode != 0
    assert "refusing to listen on '0.0.0.0' without a token" in done.stderr
    assert "Traceback" not in done.stderr
