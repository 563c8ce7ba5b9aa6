"""The pages the server renders: the landing page (``/``), the API page (``/docs``) and the icons,
over HTTP and in a real Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from stream_server import messages, version
from stream_server.config import Config
from stream_server.inference.model import LoadedModel
from stream_server.serve import pages
from stream_server.serve.openapi import CLOSE_CODES, ERROR_CODES
from tests.helpers.browser import NEEDS_BROWSER, WAIT_MS, async_playwright, launch
from tests.helpers.live import ALL, install_tokens, run, serving, start_stream, ws


class Links(HTMLParser):
    """Every ``href`` and ``src`` of a page, and the ``id`` of every element."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.targets.append(value)
            if name == "id" and value is not None:
                self.ids.add(value)


def parse(html: str) -> Links:
    links = Links()
    links.feed(html)
    links.close()
    return links


def free_port() -> int:
    """A loopback port nothing listens on (just now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def fake_dashboard(port: int) -> AsyncIterator[int]:
    """Something that answers every request 200 ``ok`` as Streamlit's health route does, on
    loopback ``port`` (yielded)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def test_the_landing_page_says_what_runs_and_every_link_answers(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dashboard_port = free_port()

    async def scenario() -> None:
        config = make_config(server={"dashboard_port": dashboard_port})
        async with serving(config, tiny_model) as (server, http):
            ready = (await http.get("/ready")).json()
            reply = await http.get("/")
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/html")
            page = reply.text
            assert "<title>genrecast</title>" in page
            assert ready["model"] in page and ready["device"] in page
            assert ready["precision"] in page and version() in page
            for label in ready["labels"]:  # chips in /ready's colours
                assert f'data-genre="{label}" data-colour="{ready["colours"][label]}"' in page
            assert '<span id="live-count">0</span>' in page  # no tokens: counted at once
            assert "Dashboard: not running" in page and "genrecast dashboard" in page
            links = parse(page)
            local = {t for t in links.targets if t.startswith("/")}
            assert {"/mic", "/docs", "/openapi.json", "/metrics", "/streams", "/health"} <= local
            assert "/favicon.svg" in local
            assert all(t.startswith("/") for t in links.targets), links.targets  # nothing remote
            for target in sorted(local):
                assert (await http.get(target)).status_code == 200, target

            await asyncio.sleep(pages.DASHBOARD_KEEP_S)  # the answer "not running" is kept
            async with fake_dashboard(dashboard_port) as port:
                links = parse((await http.get("/")).text)
                dashboard = f"http://127.0.0.1:{port}/"
                assert dashboard in links.targets
                async with httpx.AsyncClient(trust_env=False) as other:
                    assert (await other.get(dashboard)).status_code == 200

            icons = {path: (await http.get(path)) for path in ("/favicon.ico", "/favicon.svg")}
            assert icons["/favicon.ico"].content.startswith(b"\x00\x00\x01\x00")
            assert icons["/favicon.ico"].headers["content-type"] == "image/x-icon"
            assert b"<svg" in icons["/favicon.svg"].content
            png = await http.get("/favicon.png")
            assert png.content.startswith(b"\x89PNG") and png.headers["content-type"] == "image/png"
            assert server.service.streams == {}

    run(scenario())


def test_the_docs_page_renders_every_operation_and_the_websocket_protocol(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        async with serving(make_config(), tiny_model) as (_, http):
            doc = (await http.get("/openapi.json")).json()
            reply = await http.get("/docs")
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/html")
            page = reply.text
            links = parse(page)
            assert all(t.startswith(("/", "#")) for t in links.targets), links.targets
            for path, item in doc["paths"].items():
                for op in item.values():
                    assert f"op-{op['operationId']}" in links.ids, path
            # every in-page link lands on something
            for target in links.targets:
                if target.startswith("#"):
                    assert target[1:] in links.ids, target
            types = {*messages.SERVER_TYPES, "start", "stop"}
            for kind in types:
                assert f'data-type="{kind}"' in page, kind
            for code in CLOSE_CODES:
                assert f">{code}</td>" in page
            for word in ERROR_CODES:
                assert f"<code>{word}</code>" in page
            for name in doc["components"]["schemas"]:
                assert f"schema-{name}" in links.ids
            assert "This server needs no token" in page

    run(scenario())


@NEEDS_BROWSER
def test_the_landing_page_in_a_browser_reads_streams_with_a_token(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """With tokens, the page names no stream until given a token in its address; then it counts
    them, and passes the token on to the microphone page."""
    tokens = install_tokens(monkeypatch, tmp_path)

    async def scenario() -> None:
        assert async_playwright is not None
        async with (
            serving(make_config(auth=tokens), tiny_model) as (server, http),
            async_playwright() as playwright,
        ):
            browser = await launch(playwright)
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{server.http_url}/")
                assert await page.title() == "genrecast"
                await page.wait_for_selector("#streams[data-state=locked]", timeout=WAIT_MS)
                note = await page.text_content("#stream-note") or ""
                assert "/#token=YOUR_TOKEN" in note
                chips = await page.eval_on_selector_all(
                    "#labels .chip",
                    "cs => cs.map(c => [c.dataset.genre, getComputedStyle(c).backgroundColor])",
                )
                ready = (await http.get("/ready")).json()
                assert [label for label, _ in chips] == ready["labels"]
                assert all(bg.startswith("rgb(") for _, bg in chips)

                async with ws(server, f"/ws/ingest?ticket={await _ticket(http)}") as conn:
                    await start_stream(conn, name="counted")
                    await page.goto(f"{server.http_url}/#token={ALL}")
                    await page.wait_for_selector("#streams[data-state=shown]", timeout=WAIT_MS)
                    assert (await page.text_content("#live-count") or "").strip() == "1"
                    mic = await page.eval_on_selector("a[data-token]", "a => a.href")
                    assert mic == f"{server.http_url}/mic#token={ALL}", mic
                favicon = await page.evaluate("fetch('/favicon.svg').then(r => r.status)")
                assert favicon == 200
                assert errors == []
            finally:
                await browser.close()

    run(scenario())


async def _ticket(http: httpx.AsyncClient) -> str:
    reply = await http.post("/auth/ticket", headers={"Authorization": f"Bearer {ALL}"})
    ticket: str = reply.json()["ticket"]
    return ticket


def test_the_landing_page_while_the_model_loads_or_failed() -> None:
    def landing(ready: dict[str, object]) -> str:
        return pages.render_landing(
            pages.Landing(
                ready=ready, version="1.2.3", streams=None, guarded=True, dashboard_url=None
            )
        )

    loading = landing({"ready": False, "error": None})
    assert 'data-ready="false"' in loading and "loading…" in loading
    assert "reloads once the model is ready" in loading
    failed = landing({"ready": False, "error": "no <checkpoint> at /x"})
    assert "failed to load" in failed and "no &lt;checkpoint&gt; at /x" in failed
    assert '<span id="live-count">…</span>' in failed
