"""Every client of a token-protected server sends the token: the ``genrecast`` commands (a
separate process, ``--token`` or ``GENRECAST_TOKEN``), the benchmarks, the dashboard's REST
client and update feed, and the ``/mic`` page in a real Chromium (``#token=`` in its address).
Without a token, or with too few scopes, each says so in one line: no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from dashboard.api import Api
from dashboard.feed import Feed
from stream_server.config import Config
from stream_server.inference.model import LoadedModel
from stream_server.serve.auth import TOKEN_ENV
from stream_server.serve.server import running_server
from stream_server.tools import bench_upload, cli
from stream_server.tools.bench import run_bench
from stream_server.tools.client import ClientError
from tests.helpers.audio import encode_audio, music
from tests.helpers.browser import (
    NEEDS_BROWSER,
    WAIT_MS,
    async_playwright,
    fake_microphone,
    launch,
)
from tests.helpers.cli import GENRECAST, free_port, genrecast
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import ALL, FEEDER, READER, install_tokens, run

WRONG = "wrong-token-0123456789abcdef"

#: A client process's environment without a token (the tests' own has ``GENRECAST_TOKEN``).
NO_TOKEN = {TOKEN_ENV: ""}
NEEDS_TOKEN = f"the server needs a token: pass --token or set {TOKEN_ENV}"


@pytest.fixture
def protected(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Config:
    """A server config with the tokens of :func:`install_tokens`: ``GENRECAST_TOKEN`` = ``ALL``
    (every scope), a read-only and an ingest-only token; files in ``tmp_path`` may be pulled."""
    auth = install_tokens(monkeypatch, tmp_path)
    return make_config(auth=auth, sources={"media_dir": str(tmp_path)})


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    """3 s of stereo music at 44.1 kHz."""
    return encode_audio(tmp_path / "clip.wav", music(3.0, 44100, channels=2), 44100)


async def command(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``genrecast ARGS`` in a thread (the server shares this event loop); no token unless
    ``--token`` or ``env`` gives one."""
    return await asyncio.to_thread(genrecast, *args, env=NO_TOKEN if env is None else env)


def refused(done: subprocess.CompletedProcess[str], reason: str) -> None:
    """``done`` failed with ``reason`` on stderr, no traceback and no token printed."""
    assert done.returncode != 0, done.stdout
    assert reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    for token in (ALL, READER, FEEDER, WRONG):
        assert token not in done.stdout + done.stderr


def test_push_and_watch_send_the_token(
    protected: Config, tiny_model: LoadedModel, wav: Path
) -> None:
    async def scenario() -> None:
        async with running_server(protected, model=tiny_model) as server:
            url = server.http_url
            push = ("push", str(wav), "--server", url, "--quiet")
            done = await command(*push, "--token", ALL)
            assert done.returncode == 0, done.stderr
            assert re.search(r"stream \w+ ended: 3\.0 s of audio sent", done.stdout), done.stdout
            from_env = await command(*push, "--flood", env={TOKEN_ENV: FEEDER})
            assert from_env.returncode == 0, from_env.stderr
            refused(await command(*push), NEEDS_TOKEN)
            refused(
                await command(*push, "--token", WRONG),
                f"the server does not accept this token: check --token or {TOKEN_ENV}",
            )
            refused(await command(*push, "--token", READER), "the token lacks the 'ingest' scope")
            # the default pacing follows the windows on /ws/updates: that needs 'read' too
            refused(
                await command(*push, "--token", FEEDER),
                "the token lacks the 'read' scope, which the default pacing needs",
            )

            watch = ("watch", "--server", url, "--since", "0", "--count", "1")
            for env in ({TOKEN_ENV: READER}, None):
                token = () if env else ("--token", ALL)
                done = await command(*watch, *token, env=env)
                assert done.returncode == 0, done.stderr
                assert " t=" in done.stdout, done.stdout
            refused(await command(*watch), NEEDS_TOKEN)
            refused(await command(*watch, "--token", FEEDER), "the token lacks the 'read' scope")

    run(scenario())


def test_classify_and_pull_send_the_token(
    protected: Config, tiny_model: LoadedModel, wav: Path
) -> None:
    async def scenario() -> None:
        async with running_server(protected, model=tiny_model) as server:
            url = server.http_url
            classify = ("classify", str(wav), "--server", url, "--json")
            done = await command(*classify, "--token", FEEDER)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["genre"] in tiny_model.labels
            refused(await command(*classify), NEEDS_TOKEN)
            refused(
                await command(*classify, "--token", READER), "the token lacks the 'ingest' scope"
            )

            pull = ("push", "--pull", str(wav), "--server", url)
            done = await command(*pull, "--token", ALL)
            assert "token" not in done.stderr.replace(f"${TOKEN_ENV}", ""), done.stderr
            if done.returncode == 0:  # the stop hint names the variable, never the token
                assert f'-H "Authorization: Bearer ${TOKEN_ENV}"' in done.stderr
            else:  # the source policy may refuse the file: an answer past the token check
                assert "refused to pull" in done.stderr, done.stderr
            refused(await command(*pull), NEEDS_TOKEN)
            for token in (READER, FEEDER):
                refused(await command(*pull, "--token", token), "the token lacks the 'admin' scope")

    run(scenario())


def test_the_benchmarks_send_the_token(
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_checkpoint: Path,
    wav: Path,
) -> None:
    """``genrecast bench --token`` and ``bench_upload``'s ``token`` against their own server,
    which takes its tokens from the config (``GENRECAST_TOKEN`` unset)."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv("BENCH_TOKEN", ALL)
    config = tmp_path / "bench.toml"
    config.write_text(
        '[server]\nlog_level = "warning"\n'
        '[model]\npath = "untrained"\n'
        '[engine]\ndevice = "cpu"\nwindow_s = 1.0\nhop_s = 1.0\n'
        f'[storage]\ndatabase = "{tmp_path / "bench.db"}"\n'
        '[auth]\nread_tokens = ["env:BENCH_TOKEN"]\ningest_tokens = ["env:BENCH_TOKEN"]\n',
        encoding="utf-8",
    )
    bench = ("bench", "--config", str(config), "--streams", "1", "--seconds", "2", "--speed", "4")
    done = genrecast(*bench, "--token", ALL, env={})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["windows_computed"] >= 1
    refused(genrecast(*bench, env={}), NEEDS_TOKEN)

    upload = asyncio.run(
        bench_upload.bench(wav, config, str(tiny_checkpoint), "cpu", repeat=0, token=ALL)
    )
    assert upload["first"]["cached"] is False
    with pytest.raises(SystemExit, match=re.escape(NEEDS_TOKEN)):
        asyncio.run(bench_upload.bench(wav, config, str(tiny_checkpoint), "cpu", repeat=0))


def test_run_bench_without_a_token_says_so(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv("BENCH_TOKEN", ALL)
    config = make_config(
        model={"path": "untrained"},
        engine={"hop_s": 1.0, "window_s": 1.0},
        auth={"read_tokens": ["env:BENCH_TOKEN"], "ingest_tokens": ["env:BENCH_TOKEN"]},
    )
    with pytest.raises(ClientError, match=re.escape(NEEDS_TOKEN)):
        run_bench(config, streams=1, seconds=2.0, speed=4.0)


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_dashboard_sends_the_token(protected: Config, tiny_model: LoadedModel) -> None:
    """Its REST client and its update feed; ``token=""`` sends none (``None``: the
    environment's)."""

    async def scenario() -> None:
        async with running_server(protected, model=tiny_model) as server:
            url = server.http_url
            for token in (ALL, READER, None):
                reply = await asyncio.to_thread(Api(url, token=token).streams)
                assert reply.ok, reply.error
            bare = await asyncio.to_thread(Api(url, token="").streams)
            assert bare.status == 401 and NEEDS_TOKEN in bare.error
            metrics = await asyncio.to_thread(Api(url, token=FEEDER).metrics)
            assert metrics.status == 403 and "the token lacks the 'read' scope" in metrics.error
            stop = await asyncio.to_thread(Api(url, token=READER).stop_stream, "abc")
            assert stop.status == 403 and "the token lacks the 'admin' scope" in stop.error
            assert (await asyncio.to_thread(Api(url, token="").health)).ok  # open

            feeds = {token: Feed(url, token=token).start() for token in (ALL, "", FEEDER)}
            try:
                await asyncio.to_thread(wait_for, lambda: feeds[ALL].connected, "no updates")
                await asyncio.to_thread(
                    wait_for, lambda: NEEDS_TOKEN in feeds[""].status, feeds[""].status
                )
                await asyncio.to_thread(
                    wait_for, lambda: "lacks the 'read' scope" in feeds[FEEDER].status, "scope"
                )
                assert not feeds[""].connected and not feeds[FEEDER].connected
            finally:
                for feed in feeds.values():
                    await asyncio.to_thread(feed.stop)

    run(scenario())


@NEEDS_BROWSER
def test_the_dashboard_page_uses_the_token_of_its_command(
    protected: Config, tiny_model: LoadedModel
) -> None:
    """``genrecast dashboard --token``: the page lists the streams and follows the updates of a
    server that requires a token, and never shows the token."""

    async def scenario() -> None:
        assert async_playwright is not None
        async with (
            running_server(protected, model=tiny_model) as server,
            async_playwright() as playwright,
        ):
            port = free_port()
            dashboard = ("dashboard", "--server", server.http_url, "--port", str(port))
            proc = await asyncio.create_subprocess_exec(
                *GENRECAST,
                *dashboard,
                "--token",
                ALL,
                env={**os.environ, **NO_TOKEN},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            url = f"http://127.0.0.1:{port}"
            browser = await launch(playwright)
            try:
                async with httpx.AsyncClient(trust_env=False) as http:
                    deadline = time.monotonic() + 3 * TIMEOUT_S
                    while True:
                        assert proc.returncode is None, "the dashboard exited"
                        with contextlib.suppress(httpx.HTTPError):
                            if (await http.get(f"{url}/_stcore/health")).is_success:
                                break
                        assert time.monotonic() < deadline, "the dashboard did not start"
                        await asyncio.sleep(0.2)
                page = await browser.new_page()
                await page.goto(url)
                await page.wait_for_selector("table#wall", timeout=WAIT_MS)
                await page.wait_for_selector(
                    "#server-status:has-text('live updates: connected')", timeout=WAIT_MS
                )
                body = await page.text_content("body") or ""
                assert "needs a token" not in body and "scope" not in body, body
                assert "/mic#token=YOUR_TOKEN" in body  # how to open the microphone page
                assert ALL not in await page.content()
            finally:
                await browser.close()
                proc.terminate()
                await asyncio.wait_for(proc.wait(), TIMEOUT_S)

    run(scenario())


class Exec(Exception):
    """Raised by the stand-in for ``os.execve`` instead of starting Streamlit."""


def test_the_dashboard_command_hands_the_token_over_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append((argv, env))
        raise Exec

    def execv(path: str, argv: list[str]) -> None:
        raise AssertionError("the dashboard must be started with its environment")

    monkeypatch.setattr("os.execve", execve)
    monkeypatch.setattr("os.execv", execv)
    monkeypatch.setenv(TOKEN_ENV, READER)
    for args, expected in (([], READER), (["--token", ALL], ALL)):
        with pytest.raises(Exec):
            cli.main(["dashboard", "--server", "http://127.0.0.1:9", *args])
        argv, env = calls.pop()
        assert env[TOKEN_ENV] == expected
        assert "--server" in argv and "--token" not in argv
        assert all(token not in " ".join(argv) for token in (ALL, READER))


@NEEDS_BROWSER
def test_mic_page_with_a_token_in_its_address(
    protected: Config, tiny_model: LoadedModel, tmp_path: Path
) -> None:
    """Without a token the page says how to give one; with ``#token=`` it streams, shows live
    genres, and opens each updates connection with a fresh ticket (never the token)."""
    wav = encode_audio(tmp_path / "music.wav", music(8.0, 48000), 48000)

    async def scenario() -> None:
        assert async_playwright is not None
        async with (
            running_server(protected, model=tiny_model) as server,
            async_playwright() as playwright,
        ):
            browser = await launch(playwright, *fake_microphone(wav))
            try:
                page = await browser.new_page()
                await page.goto(f"{server.http_url}/mic")
                await page.click("#start")
                await page.wait_for_selector("#error.shown", timeout=WAIT_MS)
                text = await page.text_content("#error") or ""
                assert "needs a token" in text and "/mic#token=YOUR_TOKEN" in text, text
                assert await page.is_enabled("#start")
                assert not server.service.streams

                page = await browser.new_page()
                sockets: list[str] = []
                page.on("websocket", lambda ws: sockets.append(ws.url))
                await page.goto(f"{server.http_url}/mic#token={ALL}")
                await page.click("#start")
                await page.wait_for_selector("#genre[data-genre]", timeout=WAIT_MS)
                assert not await page.is_visible("#error")
                assert len(server.service.streams) == 1
                # a dropped subscription comes back with a fresh ticket
                await page.evaluate("ws.close()")
                deadline = time.monotonic() + TIMEOUT_S
                while len(sockets) < 2:
                    assert time.monotonic() < deadline, "the page did not reconnect"
                    await asyncio.sleep(0.05)
                seen = int(await page.text_content("#updates") or "0")
                await page.wait_for_function(
                    f"Number(document.getElementById('updates').textContent) > {seen}",
                    timeout=WAIT_MS,
                )
                tickets = [_ticket(url) for url in sockets]
                assert len(tickets) >= 2 and len(set(tickets)) == len(tickets), sockets
                assert all(ALL not in url for url in sockets)
                await page.click("#stop")
                await page.wait_for_selector("#status[data-state=ended]", timeout=WAIT_MS)
            finally:
                await browser.close()

    run(scenario())


def _ticket(url: str) -> str:
    """The ``ticket`` of a WebSocket URL."""
    [ticket] = parse_qs(urlsplit(url).query)["ticket"]
    return ticket
