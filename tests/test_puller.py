"""Pulled streams: the pure parts directly, then a real Icecast2, a real HTTP server, files."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import socketserver
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from stream_server.config import Config
from stream_server.core.records import StreamRecord, TrackTitle
from stream_server.core.session import SessionParams, StreamSession
from stream_server.core.windows import WindowJob
from stream_server.errors import GenrecastError
from stream_server.serve.store import SCHEMA_VERSION, TimelineStore
from stream_server.sources.puller import (
    HttpBody,
    IcyDemuxer,
    ReconnectPolicy,
    StreamStateError,
    format_hint,
    parse_stream_title,
    transition,
)
from stream_server.tools.client import http_base, wants_pull
from tests.helpers.audio import music_source
from tests.helpers.cli import free_port
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import (
    next_message,
    of_type,
    pull_config,
    run,
    serving,
    stream_info,
    updates,
)
from tests.helpers.radio import FFMPEG, EndlessMp3, LoopbackServer, mp3_file, need, send_paced_mp3

ICECAST = shutil.which("icecast2") or "/usr/bin/icecast2"

# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "url", "expected"),
    [
        ("audio/mpeg", "", "mp3"),
        ("Audio/MPEG; charset=binary", "", "mp3"),
        ("audio/aac", "", "aac"),
        ("audio/aacp", "", "aac"),
        ("application/ogg", "", "ogg"),
        ("audio/ogg", "", "ogg"),
        ("application/vnd.apple.mpegurl", "", "hls"),
        ("application/x-mpegURL", "", "hls"),
        ("audio/mpegurl", "", "hls"),
        (None, "https://example.org/live/index.m3u8?token=1", "hls"),
        ("application/octet-stream", "http://example.org/a.m3u8", "hls"),
        ("application/octet-stream", "http://example.org/stream", None),
        (None, "", None),
    ],
)
def test_format_hint_from_content_type_then_url(
    content_type: str | None, url: str, expected: str | None
) -> None:
    assert format_hint(content_type, url) == expected


def test_backoff_doubles_from_min_to_max() -> None:
    policy = ReconnectPolicy(min_s=0.5, max_s=30.0)
    assert [policy.delay(n) for n in range(1, 10)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
        30.0,
    ]
    assert policy.delay(10_000) == 30.0  # for ever, never overflowing
    with pytest.raises(ValueError, match="failures"):
        policy.delay(0)


def test_backoff_gives_up_after_max_reconnects_in_a_row() -> None:
    policy = ReconnectPolicy(min_s=1.0, max_s=3.0, max_reconnects=3)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 3.0, None, None]


def test_state_transitions() -> None:
    assert transition("connecting", "audio") == "live"
    assert transition("connecting", "lost") == "reconnecting"
    assert transition("live", "lost") == "reconnecting"
    assert transition("reconnecting", "lost") == "reconnecting"
    assert transition("reconnecting", "audio") == "live"
    assert transition("live", "finished") == "ended"
    assert transition("reconnecting", "stopped") == "ended"
    assert transition("reconnecting", "gave_up") == "failed"
    assert transition("connecting", "gave_up") == "failed"
    for final in ("ended", "failed"):
        for event in ("audio", "lost", "finished", "stopped", "gave_up"):
            with pytest.raises(StreamStateError, match=final) as info:
                transition(final, event)
            assert isinstance(info.value, GenrecastError)


def _icy_body(audio: bytes, metaint: int, titles: dict[int, bytes]) -> bytes:
    """ICY framing: after every ``metaint`` audio bytes, a length byte and padded metadata."""
    out = bytearray()
    for k, start in enumerate(range(0, len(audio), metaint)):
        chunk = audio[start : start + metaint]
        out += chunk
        if len(chunk) == metaint:
            meta = titles.get(k, b"")
            padded = meta + b"\0" * (-len(meta) % 16)
            out += bytes([len(padded) // 16]) + padded
    return bytes(out)


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096])
def test_icy_demuxer_separates_audio_and_metadata_in_any_chunking(chunk: int) -> None:
    audio = bytes(range(256)) * 20
    titles = {1: b"StreamTitle='One';", 3: "StreamTitle='Zwei \u00e4';StreamUrl='';".encode()}
    body = _icy_body(audio, 500, titles)
    demux = IcyDemuxer(500)
    got = bytearray()
    blocks: list[bytes] = []
    for i in range(0, len(body), chunk):
        a, b = demux.feed(body[i : i + chunk])
        got += a
        blocks += b
    assert bytes(got) == audio
    assert [parse_stream_title(b) for b in blocks] == ["One", "Zwei \u00e4"]
    with pytest.raises(ValueError, match="metaint"):
        IcyDemuxer(0)


def test_parse_stream_title() -> None:
    assert parse_stream_title(b"StreamTitle='Artist - Song';\0\0\0") == "Artist - Song"
    assert parse_stream_title(b"StreamTitle='Rock 'n' Roll';StreamUrl='x';") == "Rock 'n' Roll"
    assert parse_stream_title("StreamTitle='Caf\u00e9';".encode("latin-1")) == "Caf\u00e9"
    assert parse_stream_title(b"StreamTitle='';") is None
    assert parse_stream_title(b"StreamUrl='http://x';") is None


def test_http_body_strips_icy_metadata_and_checks_before_each_read() -> None:
    audio = b"\xff\xfb" * 3000
    body = _icy_body(audio, 1000, {2: b"StreamTitle='Hello';"})
    titles: list[str] = []
    checks = [0]

    def check() -> None:
        checks[0] += 1

    chunks = iter([body[i : i + 333] for i in range(0, len(body), 333)])
    reader = HttpBody(chunks, metaint=1000, on_title=titles.append, check=check)
    got = bytearray()
    while data := reader.read(512):
        assert len(data) <= 512
        got += data
    assert bytes(got) == audio
    assert titles == ["Hello"]
    assert checks[0] >= len(body) // 333

    def stalled() -> None:
        raise TimeoutError("stalled")

    reader = HttpBody(iter([b"x"]), metaint=None, on_title=titles.append, check=stalled)
    with pytest.raises(TimeoutError):
        reader.read(10)


def _session() -> StreamSession:
    params = SessionParams(
        model_rate=1000,
        window_samples=2000,
        hop_samples=500,
        buffer_samples=8000,
        labels=("rock", "jazz"),
    )
    return StreamSession("s", params, sample_rate=1000, channels=1, fmt="f32le")


def _f32(seconds: float, value: float = 0.1) -> bytes:
    return np.full(round(seconds * 1000), value, dtype="<f4").tobytes()


def test_gap_closes_the_segment_advances_stream_time_and_no_window_straddles_it() -> None:
    session = _session()
    probs = np.array([0.9, 0.1], dtype=np.float32)
    job = session.feed(_f32(3.0, 0.5))
    assert job is not None and job.end_sample == 3000
    session.on_scores(job, probs)
    stale = WindowJob("s", np.zeros(2000, dtype=np.float32), 3000, 0.0)
    stored = session.mark_gap(5.0)
    assert [(i, s.start_s, s.end_s, s.genre) for i, s in stored] == [(0, 1.0, 3.0, "rock")]
    assert session.stream_time_s == pytest.approx(8.0)
    assert session.is_stale(stale) and session.is_stale(job)
    assert session.feed(_f32(1.5)) is None  # a window after the gap needs 2 s of new audio
    job = session.feed(_f32(0.5))
    assert job is not None and not session.is_stale(job)
    scored = session.on_scores(job, probs)
    assert scored.update["stream_time_s"] == pytest.approx(10.0)
    assert scored.update["window_start_s"] == pytest.approx(8.0)
    assert np.all(job.window == np.float32(0.1))  # only audio from after the gap
    segments = session.segments()
    assert [(s.start_s, s.end_s) for s in segments] == [(1.0, 3.0), (8.0, 10.0)]
    with pytest.raises(ValueError, match="gap_s"):
        session.mark_gap(-1.0)


def test_titles_are_stored_and_a_version_1_file_gains_the_table(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    raw.executescript(
        "CREATE TABLE streams (stream_id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT "
        "NULL, source TEXT NOT NULL, created_at REAL NOT NULL, ended_at REAL, sample_rate "
        "INTEGER, channels INTEGER, fmt TEXT); PRAGMA user_version = 1;"
    )
    raw.close()
    with TimelineStore(path) as store:
        store.add_stream(StreamRecord("a", "radio", "url", "http://x", 1.0))
        store.add_title("a", TrackTitle(2.5, 100.0, "One"))
        store.add_title("a", TrackTitle(7.0, 105.0, "Two"))
        assert [t.title for t in store.titles("a")] == ["One", "Two"]
        assert store.titles("a")[0].to_dict() == {
            "stream_time_s": 2.5,
            "wall_time": 100.0,
            "title": "One",
        }
        assert store.titles("nope") == []
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    raw.close()


# -- real sources -------------------------------------------------------------------------------


async def wait_state(
    http: httpx.AsyncClient, stream_id: str, states: set[str], seen: list[str] | None = None
) -> dict[str, Any]:
    """Poll ``GET /streams`` (every 50 ms, up to TIMEOUT_S) until the stream is in ``states``."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        info = await stream_info(http, stream_id)
        if seen is not None and (not seen or seen[-1] != info["state"]):
            seen.append(info["state"])
        if info["state"] in states:
            return info
        assert time.monotonic() < deadline, f"stream stayed {info['state']!r}: {info}"
        await asyncio.sleep(0.05)


def test_endless_http_mp3_goes_live_via_the_cli_and_delete_stops_it(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    mp3 = mp3_file(tmp_path, 6.0).read_bytes()

    async def scenario() -> None:
        with EndlessMp3(mp3) as source:
            async with serving(pull_config(make_config)) as (server, http):
                cli = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "stream_server.tools.cli",
                    "push",
                    source.url,
                    "--server",
                    server.http_url,
                    "--name",
                    "endless",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(cli.communicate(), TIMEOUT_S)
                assert cli.returncode == 0, err.decode()
                stream_id = out.decode().strip()
                async with updates(server, stream_id) as conn:
                    started = await next_message(conn, of_type("stream.started"))
                    assert started["kind"] == "url" and started["name"] == "endless"
                    first = await next_message(conn, of_type("genre.update"))
                    assert first["stream_time_s"] == pytest.approx(2.0)
                    await next_message(conn, lambda m: m.get("stream_time_s", 0) >= 3.0)
                    info = await stream_info(http, stream_id)
                    assert info["kind"] == "url" and info["source"] == source.url
                    assert info["state"] == "live"
                    assert info["reconnects"] == 0 and info["dropped"] == 0
                    assert info["corrupt_packets"] == 0
                    assert info["lag_s"] is not None and info["lag_s"] < 2.0
                    reply = await http.delete(f"/streams/{stream_id}")
                    assert reply.status_code == 200, reply.text
                    ended = await next_message(conn, of_type("stream.ended"))
                    assert ended["reason"] == "stopped by request"
                info = await stream_info(http, stream_id)
                assert info["state"] == "ended" and info["ended_at"] is not None
                assert (await http.delete(f"/streams/{stream_id}")).status_code == 404
                timeline = (await http.get(f"/streams/{stream_id}/timeline")).json()
                assert timeline["segments"] and timeline["titles"] == []

    run(scenario(), limit_s=3 * TIMEOUT_S)


class HlsFolder(LoopbackServer):
    """An HLS playlist of AAC segments (made by ffmpeg) served by a plain ``http.server``."""

    def __init__(self, tmp_path: Path, seconds: float) -> None:
        need(FFMPEG)
        folder = tmp_path / "hls"
        folder.mkdir()
        subprocess.run(
            [
                *(FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"),
                *("-i", str(music_source(tmp_path)), "-t", str(seconds), "-ac", "2"),
                *("-c:a", "aac", "-b:a", "96k", "-f", "hls", "-hls_time", "1"),
                *("-hls_list_size", "0", "-hls_playlist_type", "vod"),
                str(folder / "index.m3u8"),
            ],
            check=True,
            timeout=TIMEOUT_S,
        )

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "/index.m3u8")


def test_hls_playlist_goes_live_and_produces_updates(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """An HLS playlist over HTTP is read by FFmpeg's HLS client: the stream goes live and its
    windows are computed like any other stream's."""

    async def scenario() -> None:
        with HlsFolder(tmp_path, 6.0) as hls:
            async with serving(pull_config(make_config)) as (server, http):
                reply = await http.post("/streams", json={"url": hls.url, "name": "hls"})
                assert reply.status_code == 201, reply.text
                stream_id = reply.json()["stream_id"]
                async with updates(server, stream_id) as conn:
                    update = await next_message(conn, of_type("genre.update"))
                    ready = (await http.get("/ready")).json()
                    assert update["genre"] in ready["labels"]
                    assert update["stream_time_s"] >= 2.0  # a full window of decoded audio
                    info = await stream_info(http, stream_id)
                    assert info["kind"] == "url" and info["source"] == hls.url
                    assert info["corrupt_packets"] == 0
                    assert info["windows_computed"] >= 1
                    await http.delete(f"/streams/{stream_id}")
                    await next_message(conn, of_type("stream.ended"))

    run(scenario(), limit_s=3 * TIMEOUT_S)


class ShoutcastV1(LoopbackServer):
    """An old SHOUTcast-style server: it answers ``ICY 200 OK`` (not HTTP) and sends MP3, with
    ICY metadata (``StreamTitle``) every ``metaint`` bytes when the request asks for it."""

    def __init__(self, mp3: bytes, title: str, metaint: int = 8192) -> None:
        owner = self
        self.requests: list[list[str]] = []
        block = f"StreamTitle='{title}';".encode()
        block += b"\0" * (-len(block) % 16)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                lines = []
                while line := self.rfile.readline().strip():
                    lines.append(line.decode("latin-1"))  # the request's lines
                owner.requests.append(lines)
                metadata = any(h.lower() == "icy-metadata: 1" for h in lines[1:])
                head = b"ICY 200 OK\r\nicy-name: old radio\r\ncontent-type: audio/mpeg\r\n"
                if metadata:
                    head += f"icy-metaint: {metaint}\r\n".encode()
                audio_left = metaint

                def write(data: bytes) -> None:
                    nonlocal audio_left
                    while data and metadata:
                        n = min(audio_left, len(data))
                        self.wfile.write(data[:n])
                        data, audio_left = data[n:], audio_left - n
                        if audio_left == 0:
                            self.wfile.write(bytes([len(block) // 16]) + block)
                            audio_left = metaint
                    self.wfile.write(data)

                with contextlib.suppress(OSError):
                    self.wfile.write(head + b"\r\n")
                send_paced_mp3(write, mp3, owner.stop)

        super().__init__(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler), "/live")


def test_an_icy_200_ok_server_is_read_with_its_titles(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """``ICY 200 OK`` is not HTTP: the request is made again by hand over a checked connection,
    and the audio and the ``StreamTitle`` metadata are read like an Icecast body's."""
    mp3 = mp3_file(tmp_path, 4.0).read_bytes()

    async def scenario() -> None:
        with ShoutcastV1(mp3, "Old Radio - Song") as radio:
            async with serving(pull_config(make_config)) as (server, http):
                reply = await http.post("/streams", json={"url": radio.url})
                assert reply.status_code == 201, reply.text
                stream_id = reply.json()["stream_id"]
                async with updates(server, stream_id) as conn:
                    change = await next_message(conn, of_type("track.change"))
                    assert change["title"] == "Old Radio - Song"
                    await next_message(conn, of_type("genre.update"))
                    info = await stream_info(http, stream_id)
                    assert info["state"] == "live" and info["reconnects"] == 0
                    assert info["corrupt_packets"] == 0
                    await http.delete(f"/streams/{stream_id}")
                    await next_message(conn, of_type("stream.ended"))
        by_hand = radio.requests[-1]
        assert by_hand[0] == "GET /live HTTP/1.0", by_hand
        assert "Icy-MetaData: 1" in by_hand

    run(scenario(), limit_s=3 * TIMEOUT_S)


def test_bad_requests_are_refused_with_a_clear_message(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with serving(pull_config(make_config)) as (_, http):
            cases: list[tuple[Any, str]] = [
                (b"{not json", "invalid JSON"),
                (b"[1, 2]", "JSON object"),
                (b"{}", "'url'"),
                (json.dumps({"url": ""}).encode(), "'url'"),
                (json.dumps({"url": 5}).encode(), "'url'"),
                (json.dumps({"url": "http://x", "name": 3}).encode(), "'name'"),
            ]
            for body, text in cases:
                reply = await http.post(
                    "/streams", content=body, headers={"content-type": "application/json"}
                )
                assert reply.status_code == 400, (body, reply.text)
                assert text in reply.json()["error"], reply.json()
            reply = await http.post("/streams", json={"url": str(tmp_path / "missing.mp3")})
            assert reply.status_code == 403, reply.text
            assert "not allowed" in reply.json()["error"], reply.json()
            assert (await http.delete("/streams/nope")).status_code == 404
            assert (await http.get("/streams")).json()["streams"] == []

    run(scenario(), limit_s=3 * TIMEOUT_S)


def test_unreachable_source_is_tried_again_then_fails_without_hurting_another_stream(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """A source that never delivered audio is tried ``first_connect_attempts`` times."""
    mp3 = mp3_file(tmp_path, 6.0).read_bytes()
    port = free_port()
    dead = f"http://127.0.0.1:{port}/nothing.mp3"
    config = pull_config(
        make_config, first_connect_attempts=4, max_reconnects=1, reconnect_min_s=0.3
    )

    async def scenario() -> None:
        with EndlessMp3(mp3) as source:
            async with serving(config) as (server, http):
                good = (await http.post("/streams", json={"url": source.url})).json()
                reply = await http.post("/streams", json={"url": dead, "name": "dead"})
                assert reply.status_code == 201
                bad = reply.json()
                assert bad["state"] == "connecting" and bad["kind"] == "url"
                seen: list[str] = []
                async with updates(server, bad["stream_id"]) as conn:
                    await wait_state(http, bad["stream_id"], {"reconnecting"}, seen)
                    ended = await next_message(conn, of_type("stream.ended"))
                refused = f"connection refused by 127.0.0.1:{port}"
                assert ended["reason"] == f"source failed 4 times in a row; last: {refused}"
                info = await wait_state(http, bad["stream_id"], {"failed"}, seen)
                assert info["reconnects"] == 3 and info["last_error"] == refused
                assert seen[0] in ("connecting", "reconnecting") and seen[-1] == "failed"
                assert "live" not in seen
                async with updates(server, good["stream_id"]) as conn:
                    after = await next_message(conn, of_type("genre.update"))
                assert after["stream_id"] == good["stream_id"]
                assert (await stream_info(http, good["stream_id"]))["state"] == "live"

    run(scenario(), limit_s=3 * TIMEOUT_S)


def test_local_file_with_garbage_is_decoded_around_it_paced_and_ends(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    seconds = 5.0
    data = bytearray(mp3_file(tmp_path, seconds).read_bytes())
    rng = np.random.default_rng(0)
    for pos in (20_000, 45_000, 70_000):  # random bytes spliced in (not overwriting audio)
        data[pos:pos] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))

    async def scenario() -> None:
        async with serving(pull_config(make_config, media_dir=str(tmp_path))) as (server, http):
            t0 = time.monotonic()
            reply = await http.post("/streams", json={"url": str(damaged)})
            assert reply.status_code == 201, reply.text
            stream_id = reply.json()["stream_id"]
            async with updates(server, stream_id) as conn:
                ended = await next_message(conn, of_type("stream.ended"))
            elapsed = time.monotonic() - t0
            assert ended["reason"] == "end of source"
            assert elapsed >= 0.9 * seconds, "a local file is paced at real time"
            assert ended["stream_time_s"] == pytest.approx(seconds, abs=0.5)
            assert ended["windows_computed"] > 0
            info = await stream_info(http, stream_id)
            assert info["state"] == "ended"
            assert info["corrupt_packets"] > 0  # FFmpeg's mp3 decoder rejected damaged frames
            assert info["reconnects"] == 0

    run(scenario(), limit_s=3 * TIMEOUT_S)


# -- a real Icecast2 server fed by a real ffmpeg source client ------------------------------------

ICECAST_XML = """<icecast>
  <location>test</location><admin>test@localhost</admin>
  <limits>
    <clients>20</clients><sources>4</sources><queue-size>524288</queue-size>
    <client-timeout>30</client-timeout><header-timeout>15</header-timeout>
    <source-timeout>5</source-timeout><burst-on-connect>1</burst-on-connect>
    <burst-size>65535</burst-size>
  </limits>
  <authentication>
    <source-password>{password}</source-password><relay-password>{password}</relay-password>
    <admin-user>admin</admin-user><admin-password>{password}</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>0</fileserve>
  <paths>
    <basedir>{dir}</basedir><logdir>{dir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging><accesslog>-</accesslog><errorlog>-</errorlog><loglevel>3</loglevel></logging>
  <security><chroot>0</chroot>{changeowner}</security>
</icecast>
"""


class Icecast:
    """icecast2 on a free loopback port; logs go to ``icecast.log`` in ``folder``.

    Icecast refuses to run as root, so as root it is told to switch to ``nobody`` once it
    listens (``<changeowner>``); its logs go to stderr, a file the test opened beforehand.
    """

    def __init__(self, folder: Path) -> None:
        import os

        self.folder = folder
        self.port = free_port()
        self.password = "genrecast-test"
        owner = ""
        if os.geteuid() == 0:
            owner = "<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
        self._owner = owner
        self.config = folder / "icecast.xml"
        self.log = open(folder / "icecast.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None
        self.source: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mp3"

    def start(self, attempts: int = 3) -> None:
        """Start icecast; one that exits before it listens (its free port taken meanwhile by
        another process) is started again on another port, ``attempts`` times in all."""
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            self.config.write_text(
                ICECAST_XML.format(
                    password=self.password,
                    port=self.port,
                    dir=self.folder,
                    changeowner=self._owner,
                )
            )
            self.proc = subprocess.Popen(
                [ICECAST, "-c", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT
            )
            try:
                self._wait(lambda status: True, "icecast to listen")
                return
            except AssertionError:
                if self.proc.poll() is None or attempt == attempts - 1:
                    raise

    def status(self) -> dict[str, Any]:
        reply = httpx.get(f"http://127.0.0.1:{self.port}/status-json.xsl", trust_env=False)
        status: dict[str, Any] = reply.json()["icestats"]
        return status

    def _wait(self, ready: Callable[[dict[str, Any]], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if ready(self.status()):
                    return
            assert self.proc is not None and self.proc.poll() is None, self.log_text()
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def log_text(self) -> str:
        self.log.flush()
        return (self.folder / "icecast.log").read_text(errors="replace")

    def start_source(self, clip: Path) -> None:
        """ffmpeg as the source client: the clip looped at real time as 128 kbit/s MP3."""
        self.source = subprocess.Popen(
            [
                *(FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-re"),
                *("-stream_loop", "-1", "-i", str(clip), "-ac", "2", "-c:a", "libmp3lame"),
                *("-b:a", "128k", "-content_type", "audio/mpeg", "-ice_name", "genrecast test"),
                *(
                    "-f",
                    "mp3",
                    f"icecast://source:{self.password}@127.0.0.1:{self.port}/stream.mp3",
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self._wait(lambda status: "source" in status, "the source to connect")

    def stop_source(self) -> None:
        if self.source is not None:
            self.source.kill()
            self.source.wait(TIMEOUT_S)
            self.source = None

    def set_title(self, title: str) -> None:
        reply = httpx.get(
            f"http://127.0.0.1:{self.port}/admin/metadata",
            params={"mount": "/stream.mp3", "mode": "updinfo", "song": title},
            auth=("admin", self.password),
            trust_env=False,
        )
        assert reply.status_code == 200 and "successful" in reply.text, reply.text

    def stop(self) -> None:
        self.stop_source()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT_S)
        self.log.close()


@pytest.fixture
def icecast(tmp_path: Path) -> Iterator[Icecast]:
    need(ICECAST)
    need(FFMPEG)
    server = Icecast(tmp_path)
    try:  # a start that fails still closes the log and stops the process
        server.start()
        yield server
    finally:
        server.stop()


def test_icecast_radio_goes_live_reconnects_with_a_gap_and_reports_titles(
    make_config: Callable[..., Config], tmp_path: Path, icecast: Icecast
) -> None:
    clip = music_source(tmp_path)
    icecast.start_source(clip)

    async def scenario() -> None:
        async with serving(pull_config(make_config)) as (server, http):
            reply = await http.post("/streams", json={"url": icecast.url, "name": "radio"})
            assert reply.status_code == 201, reply.text
            stream_id = reply.json()["stream_id"]
            async with updates(server, stream_id) as conn:
                await next_message(conn, of_type("genre.update"))
                assert (await stream_info(http, stream_id))["state"] == "live"

                await asyncio.to_thread(icecast.set_title, "Ella Fitzgerald - Misty")
                change = await next_message(conn, of_type("track.change"))
                assert change["title"] == "Ella Fitzgerald - Misty"
                assert change["stream_id"] == stream_id and change["stream_time_s"] > 0

                seen: list[str] = []
                await asyncio.to_thread(icecast.stop_source)
                await wait_state(http, stream_id, {"reconnecting"}, seen)
                before = await stream_info(http, stream_id)
                await asyncio.to_thread(icecast.start_source, clip)
                after = await wait_state(http, stream_id, {"live"}, seen)
                assert seen[0] in ("live", "reconnecting") and seen[-1] == "live"
                assert "reconnecting" in seen
                assert after["reconnects"] >= 1
                resumed = await next_message(
                    conn,
                    lambda m: (
                        m["type"] == "genre.update" and m["stream_time_s"] > before["stream_time_s"]
                    ),
                )
                assert resumed["stream_id"] == stream_id

            timeline = (await http.get(f"/streams/{stream_id}/timeline")).json()
            segments = timeline["segments"]
            holes = [b["start_s"] - a["end_s"] for a, b in itertools.pairwise(segments)]
            assert holes and max(holes) >= 0.5, segments  # the gap, in stream time
            assert all(h >= 0 for h in holes)
            assert [t["title"] for t in timeline["titles"]] == ["Ella Fitzgerald - Misty"]
            assert timeline["titles"][0]["stream_time_s"] == change["stream_time_s"]

    run(scenario(), limit_s=3 * TIMEOUT_S)


def test_push_pulls_only_web_urls_and_hints_an_http_address() -> None:
    assert wants_pull("http://radio.example/stream.mp3")
    assert wants_pull("HTTPS://radio.example/live")
    assert not wants_pull("/music/song.mp3")
    assert not wants_pull("rtmp://radio.example/live")
    assert http_base("ws://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert http_base("wss://genres.example/") == "https://genres.example"
    assert http_base("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
