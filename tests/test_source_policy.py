"""What a client may make the server pull: the policy on its own, then ``POST /streams`` against
a real server, real files and real loopback HTTP servers (which count every request they get, so
that "never fetched" is observed, not assumed)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from stream_server.config import Config, SourcesConfig, config_from_dict
from stream_server.errors import ConfigError, GenrecastError, SourceRefused
from stream_server.serve.server import RunningServer
from stream_server.sources.puller import MAX_BURST_S, RECOVERED_S
from stream_server.sources.source_policy import (
    MediaFile,
    SourcePolicy,
    WebUrl,
    address_problem,
    playlist_uris,
    shown_source,
)
from stream_server.sources.web_fetch import MAX_PLAYLIST_BYTES
from tests.helpers.audio import encode_audio, music
from tests.helpers.cli import free_port
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.hls import HLS_TYPE, TS_TYPE, aac_segments, media_playlist
from tests.helpers.live import (
    ended_info,
    next_message,
    of_type,
    run,
    serving,
    stream_info,
    updates,
)
from tests.helpers.site import Route, Site

REFUSED = SourceRefused.MESSAGE

# -- the policy on its own ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "default", "with_lan_switch"),
    [
        ("8.8.8.8", None, None),
        ("2001:4860:4860::8888", None, None),
        ("127.0.0.1", "loopback", None),
        ("127.1.2.3", "loopback", None),
        ("::1", "loopback", None),
        ("10.1.2.3", "private", None),
        ("172.16.0.1", "private", None),
        ("192.168.1.20", "private", None),
        ("fd12:3456::1", "private", None),
        ("100.64.0.1", "private", None),  # shared address space (carrier-grade NAT)
        ("169.254.1.1", "link-local", None),
        ("fe80::1%eth0", "link-local", None),
        ("169.254.169.254", "metadata", "metadata"),
        ("fd00:ec2::254", "metadata", "metadata"),
        ("100.100.100.200", "metadata", "metadata"),
        ("0.0.0.0", "unspecified", "unspecified"),
        ("0.1.2.3", "unspecified", "unspecified"),
        ("::", "unspecified", "unspecified"),
        ("224.0.0.1", "multicast", "multicast"),
        ("ff02::1", "multicast", "multicast"),
        ("240.0.0.1", "reserved", "reserved"),
        ("255.255.255.255", "reserved", "reserved"),
        ("::ffff:127.0.0.1", "loopback", None),  # IPv4-mapped IPv6
        ("::ffff:169.254.169.254", "metadata", "metadata"),
        ("64:ff9b::a00:1", "private", None),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", None, None),  # NAT64 of 8.8.8.8
        ("2002:7f00:1::", "loopback", None),  # 6to4 of 127.0.0.1
        ("not an address", "not an IP address", "not an IP address"),
    ],
)
def test_address_classes(address: str, default: str | None, with_lan_switch: str | None) -> None:
    problem = address_problem(address)
    assert (problem is None) == (default is None), problem
    assert default is None or (problem is not None and default in problem)
    lan = address_problem(address, allow_private=True)
    assert (lan is None) == (with_lan_switch is None), lan
    assert with_lan_switch is None or (lan is not None and with_lan_switch in lan)


def fake_resolver(table: dict[str, Sequence[str]]) -> Callable[[str, int], Sequence[str]]:
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def test_every_resolved_address_is_checked() -> None:
    policy = SourcePolicy(
        resolver=fake_resolver(
            {
                "radio.example": ["93.184.216.34", "2606:2800:220:1::1"],
                "split.example": ["93.184.216.34", "10.0.0.7"],  # one bad address is enough
                "rebind.example": ["::ffff:169.254.169.254"],
                "empty.example": [],
            }
        )
    )
    assert policy.check_address("radio.example", 80) == ("93.184.216.34", "2606:2800:220:1::1")
    assert policy.check_source("https://Radio.Example/live") == WebUrl(
        "https://Radio.Example/live", "https", "radio.example", 443
    )
    for host in ("split.example", "rebind.example"):
        with pytest.raises(SourceRefused) as info:
            policy.check_address(host, 80)
        assert str(info.value) == REFUSED and not info.value.transient
        assert isinstance(info.value, GenrecastError)
    for host in ("nowhere.example", "empty.example"):  # may resolve later: retried by a puller
        with pytest.raises(SourceRefused) as info:
            policy.check_address(host, 80)
        assert str(info.value) == REFUSED and info.value.transient


def test_localhost_and_literal_spellings_of_loopback_are_refused_by_the_real_resolver() -> None:
    policy = SourcePolicy.from_config(SourcesConfig())
    for url in (
        "http://localhost:8000/",
        "http://LOCALHOST./",
        "http://127.0.0.1/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0:8000/",
        "http://169.254.169.254/latest/meta-data/",
    ):
        with pytest.raises(SourceRefused) as info:
            policy.check_source(url)
        assert str(info.value) == REFUSED, url


def test_the_lan_switch_and_allowed_hosts() -> None:
    lan = SourcePolicy.from_config(SourcesConfig(allow_private_addresses=True))
    assert lan.check_address("127.0.0.1", 8000) == ("127.0.0.1",)
    with pytest.raises(SourceRefused):
        lan.check_address("169.254.169.254", 80)  # metadata stays refused on a LAN
    allowed = SourcePolicy.from_config(SourcesConfig(allowed_hosts=["127.0.0.1:8000", "[::1]"]))
    assert allowed.check_address("127.0.0.1", 8000) == ("127.0.0.1",)
    assert allowed.check_address("::1", 1234) == ("::1",)
    with pytest.raises(SourceRefused):
        allowed.check_address("127.0.0.1", 8001)  # another port of the same host


@pytest.mark.parametrize(
    "source",
    [
        "concat:/etc/passwd|/etc/hostname",
        "subfile,,start,0,end,100,,:/etc/passwd",
        "subfile:/etc/passwd",
        "unix:/run/some.sock",
        "tcp://127.0.0.1:9?listen=1",
        "udp://127.0.0.1:9",
        "ftp://127.0.0.1/file",
        "gopher://127.0.0.1:6379/_SET%20x%201",
        "rtmp://radio.example/live",
        "data:audio/wav;base64,UklGRg==",
        "pipe:0",
        "hls+http://radio.example/a.m3u8",
        "crypto+http://radio.example/a.ts",
        "file:///etc/passwd",
        "file://otherhost/etc/passwd",
        "/etc/passwd",
        "/etc/shadow",
        "../../etc/passwd",
        "http://user:secret@radio.example/",
        "http:///no-host",
        "http://radio.example:99999/",
        "http://radio.example/a b",
        "http://radio.example/\x00",
        "http://radio.example\\@127.0.0.1/",
    ],
)
def test_everything_but_web_urls_and_media_files_is_refused(source: str) -> None:
    policy = SourcePolicy(resolver=fake_resolver({"radio.example": ["93.184.216.34"]}))
    with pytest.raises(SourceRefused) as info:
        policy.check_source(source)
    assert str(info.value) == REFUSED
    assert source not in str(info.value)  # the message never echoes what the client sent


def test_media_files_only_inside_the_folder_after_symlinks(tmp_path: Path) -> None:
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    song = media / "sub" / "song.wav"
    song.write_bytes(b"RIFF")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    (media / "escape.wav").symlink_to(secret)
    (media / "inside.wav").symlink_to(song)
    (media / "up").symlink_to(tmp_path)
    os.mkfifo(media / "fifo.wav")
    policy = SourcePolicy.from_config(SourcesConfig(media_dir=str(media)))
    for good in ("sub/song.wav", str(song), f"file://{song}", "inside.wav"):
        assert policy.check_source(good) == MediaFile(song.resolve()), good
    for bad in (
        str(secret),
        "escape.wav",
        "up/secret.txt",
        "sub/../../secret.txt",
        "missing.wav",
        str(media / "missing.wav"),
        "sub",
        "fifo.wav",
        "/etc/shadow",
        "/etc/passwd",
        "",
    ):
        with pytest.raises(SourceRefused) as info:
            policy.check_source(bad)
        assert str(info.value) == REFUSED, bad
    nothing = SourcePolicy.from_config(SourcesConfig())  # no media folder: no files at all
    with pytest.raises(SourceRefused):
        nothing.check_source(str(song))


def test_playlist_uris_of_master_and_media_playlists() -> None:
    master = (
        "#EXTM3U\n"
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",URI="audio/en.m3u8"\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=96000,AUDIO="a"\n'
        "low/index.m3u8\n"
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1000,URI="iframes.m3u8"\n'
    )
    playlists, others = playlist_uris(master, "http://radio.example/live/master.m3u8")
    assert playlists == [
        "http://radio.example/live/audio/en.m3u8",
        "http://radio.example/live/low/index.m3u8",
    ]
    assert others == ["http://radio.example/live/iframes.m3u8"]
    media = (
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n"
        '#EXT-X-KEY:METHOD=AES-128,URI="https://keys.example/k"\n'
        '#EXT-X-MAP:URI="init.mp4"\n'
        "#EXTINF:2,\nseg0.ts\n#EXTINF:2,\n  http://10.0.0.1/seg1.ts  \n#EXT-X-ENDLIST\n"
    )
    assert playlist_uris(media, "http://radio.example/a/index.m3u8") == (
        [],
        [
            "https://keys.example/k",
            "http://radio.example/a/init.mp4",
            "http://radio.example/a/seg0.ts",
            "http://10.0.0.1/seg1.ts",
        ],
    )


def test_source_config_keys_defaults_and_errors() -> None:
    default = SourcesConfig()
    assert default.max_reconnects == 10  # failed pulls stop
    assert default.first_connect_attempts == 1  # a source that never worked fails at once
    assert default.media_dir == "" and not default.allow_private_addresses
    assert default.allowed_hosts == []
    loaded = config_from_dict(
        {
            "sources": {
                "media_dir": "/srv/music",
                "allow_private_addresses": True,
                "allowed_hosts": ["radio.lan", "10.0.0.5:8000", "[fd12::1]:80"],
            }
        }
    ).sources
    assert loaded.allowed_hosts == ["radio.lan", "10.0.0.5:8000", "[fd12::1]:80"]
    assert SourcePolicy.from_config(loaded).allowed_hosts == {
        ("radio.lan", None),
        ("10.0.0.5", 8000),
        ("fd12::1", 80),
    }
    for key, value in (
        ("allowed_hosts", "radio.lan"),
        ("allowed_hosts", ["radio.lan:99999"]),
        ("allowed_hosts", ["http://radio.lan/"]),
        ("allowed_hosts", ["::1"]),
        ("allowed_hosts", [""]),
        ("allowed_hosts", [5]),
        ("allow_private_addresses", "yes"),
        ("media_dir", 3),
        ("first_connect_attempts", 0),
        ("first_connect_attempts", 1.5),
    ):
        with pytest.raises(ConfigError) as info:
            config_from_dict({"sources": {key: value}})
        assert info.value.key == f"sources.{key}", (key, value)


# -- real servers -------------------------------------------------------------------------------


def wav_route(tmp_path: Path, seconds: float = 8.0) -> Route:
    path = encode_audio(tmp_path / "music.wav", music(seconds, 22050), 22050)
    return Route(200, (("Content-Type", "audio/wav"),), path.read_bytes())


def redirect(location: str) -> Route:
    return Route(302, (("Location", location),))


def source_config(make_config: Callable[..., Config], **sources: Any) -> Config:
    """The untrained model, short windows, fast reconnects; the source policy's defaults."""
    return make_config(
        model={"path": "untrained"},
        engine={"window_s": 2.0, "hop_s": 0.5},
        sources={"stall_s": 3.0, "reconnect_min_s": 0.1, "reconnect_max_s": 0.2, **sources},
    )


async def post(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.post("/streams", json={"url": url})


async def assert_refused(http: httpx.AsyncClient, server: RunningServer, url: str) -> None:
    """403 with the one message, and no stream registered for it."""
    reply = await post(http, url)
    assert reply.status_code == 403, (url, reply.text)
    assert reply.json() == {"error": REFUSED, "code": "source_not_allowed"}, url
    assert not server.service.streams, url


async def hit(site: Site, path: str) -> None:
    """Wait (polling every 20 ms, up to TIMEOUT_S seconds) until ``site`` was asked for ``path``."""
    deadline = time.monotonic() + TIMEOUT_S
    while path not in site.hits:
        assert time.monotonic() < deadline, site.hits
        await asyncio.sleep(0.02)


async def failed_with(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """Pull ``url`` (accepted: 201) and wait, polling ``GET /streams`` every 50 ms for up to
    TIMEOUT_S seconds, until the stream has ended and lists its final ``reason``."""
    reply = await post(http, url)
    assert reply.status_code == 201, (url, reply.text)
    return await ended_info(http, reply.json()["stream_id"])


def test_files_outside_the_media_folder_get_the_answer_a_missing_file_gets(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    encode_audio(media / "song.wav", music(3.0, 22050), 22050)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    (media / "escape.wav").symlink_to(secret)
    (media / "etc").symlink_to("/etc")
    config = source_config(make_config, media_dir=str(media))

    async def scenario() -> None:
        async with serving(config) as (server, http):
            for url in (
                "/etc/shadow",
                "/etc/passwd",
                "/etc/no-such-file",
                str(secret),
                str(media / "missing.wav"),
                "missing.wav",
                "escape.wav",
                "etc/passwd",
                "../secret.txt",
                str(media),
                f"file://{secret}",
                "file:///etc/passwd",
            ):
                await assert_refused(http, server, url)
            assert (await http.get("/streams")).json()["streams"] == []
            reply = await post(http, "song.wav")  # inside the folder: pulled
            assert reply.status_code == 201, reply.text
            stream_id = reply.json()["stream_id"]
            async with updates(server, stream_id) as conn:
                ended = await next_message(conn, of_type("stream.ended"))
            assert ended["reason"] == "end of source" and ended["windows_computed"] > 0

    run(scenario(), limit_s=3 * TIMEOUT_S)


class TcpListener:
    """A plain TCP service on loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        self.sock.close()


def test_other_protocols_never_reach_ffmpeg(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """Each of these, given to FFmpeg, would open a listening port chosen by the client, write a
    line into an internal TCP service, or read local files through ``concat:``/``subfile:``."""
    service = TcpListener()
    listen_port = free_port()
    # a LAN server: loopback allowed, so that only the scheme can be what refuses these
    config = source_config(make_config, allow_private_addresses=True, media_dir=str(tmp_path))

    async def scenario() -> None:
        async with serving(config) as (server, http):
            for url in (
                f"tcp://127.0.0.1:{listen_port}?listen=1",
                f"gopher://127.0.0.1:{service.port}/_SET%20owned%201",
                f"ftp://127.0.0.1:{service.port}/file.mp3",
                f"tcp://127.0.0.1:{service.port}",
                f"http://user:pw@127.0.0.1:{service.port}/",
                f"rtmp://127.0.0.1:{service.port}/live",
                "concat:/etc/passwd|/etc/hostname",
                "subfile,,start,0,end,100,,:/etc/passwd",
                "unix:/tmp/genrecast-nothing.sock",
                "file:///etc/passwd",
            ):
                await assert_refused(http, server, url)
            await asyncio.sleep(0.3)  # anything started would have connected by now
            with socket.socket() as probe:  # nobody listens on the port the client chose
                assert probe.connect_ex(("127.0.0.1", listen_port)) != 0
            assert service.accepted == 0
            assert (await http.get("/streams")).json()["streams"] == []

    try:
        run(scenario(), limit_s=3 * TIMEOUT_S)
    finally:
        service.close()


def test_loopback_http_is_refused_by_default_and_pulled_with_the_lan_switch(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    async def refused(site: Site) -> None:
        async with serving(source_config(make_config)) as (server, http):
            for url in (
                f"{site.base}/music.wav",
                f"http://localhost:{site.port}/music.wav",
                f"http://2130706433:{site.port}/music.wav",
                f"http://[::ffff:127.0.0.1]:{site.port}/music.wav",
                "http://169.254.169.254/latest/meta-data/",
            ):
                await assert_refused(http, server, url)
        assert site.hits == []

    async def pulled(site: Site) -> None:
        config = source_config(make_config, allow_private_addresses=True)
        async with serving(config) as (server, http):
            reply = await post(http, f"{site.base}/music.wav")
            assert reply.status_code == 201, reply.text
            stream_id = reply.json()["stream_id"]
            async with updates(server, stream_id) as conn:
                update = await next_message(conn, of_type("genre.update"))
                assert update["stream_time_s"] >= 2.0
                assert (await stream_info(http, stream_id))["state"] == "live"
                await http.delete(f"/streams/{stream_id}")
                await next_message(conn, of_type("stream.ended"))
            # the metadata address stays refused on a LAN
            await assert_refused(http, server, "http://169.254.169.254/latest/meta-data/")
        assert site.hits == ["/music.wav"]

    with Site({"/music.wav": wav_route(tmp_path)}) as site:
        run(refused(site), limit_s=3 * TIMEOUT_S)
        run(pulled(site), limit_s=3 * TIMEOUT_S)


def test_every_redirect_is_checked(make_config: Callable[..., Config], tmp_path: Path) -> None:
    """The first server is allowed by name and port (``allowed_hosts``); where it redirects to
    is checked again, and a refused hop is never connected to."""
    with Site({"/music.wav": wav_route(tmp_path)}) as target, Site() as first:
        first.routes.update(
            {
                "/to-other-port": redirect(f"{target.base}/music.wav"),
                "/to-localhost": redirect(f"http://localhost:{target.port}/music.wav"),
                "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
                "/to-file": redirect("file:///etc/passwd"),
                "/to-gopher": redirect(f"gopher://127.0.0.1:{target.port}/_x"),
                "/via-self": redirect("/hop"),
                "/hop": redirect(f"//127.0.0.1:{target.port}/music.wav"),
                "/loop": redirect("/loop"),
                "/fine": redirect("/music.wav"),
                "/music.wav": wav_route(tmp_path),
            }
        )
        config = source_config(
            make_config, allowed_hosts=[f"127.0.0.1:{first.port}"], max_reconnects=1
        )

        async def scenario() -> None:
            async with serving(config) as (server, http):
                await assert_refused(http, server, f"{target.base}/music.wav")
                for path in (
                    "/to-other-port",
                    "/to-localhost",
                    "/to-metadata",
                    "/to-file",
                    "/to-gopher",
                    "/via-self",
                ):
                    info = await failed_with(http, first.base + path)
                    assert info["state"] == "failed", (path, info)
                    assert info["reason"] == REFUSED, (path, info)
                    assert info["reconnects"] == 0, "a refused source is not retried"
                info = await failed_with(http, f"{first.base}/loop")
                assert info["state"] == "failed"
                assert "more than 5 redirects" in info["reason"], info
                assert first.hits.count("/loop") == 6  # one connection of six requests
                # a redirect to an allowed place is followed
                reply = await post(http, f"{first.base}/fine")
                assert reply.status_code == 201, reply.text
                stream_id = reply.json()["stream_id"]
                async with updates(server, stream_id) as conn:
                    await next_message(conn, of_type("genre.update"))
                    await http.delete(f"/streams/{stream_id}")
            assert target.hits == []

        run(scenario(), limit_s=3 * TIMEOUT_S)


def test_hls_segments_and_variants_on_refused_hosts_are_never_fetched(
    make_config: Callable[..., Config],
) -> None:
    hls = (("Content-Type", "application/vnd.apple.mpegurl"),)
    with Site() as target, Site() as first:

        def media_playlist(base: str) -> bytes:
            return (
                "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
                f"#EXTINF:2.0,\n{base}/seg0.ts\n#EXTINF:2.0,\n{base}/seg1.ts\n#EXT-X-ENDLIST\n"
            ).encode()

        first.routes.update(
            {
                "/segments-elsewhere.m3u8": Route(200, hls, media_playlist(target.base)),
                "/key-elsewhere.m3u8": Route(
                    200,
                    hls,
                    media_playlist(first.base).replace(
                        b"#EXTINF",
                        f'#EXT-X-KEY:METHOD=AES-128,URI="{target.base}/key"\n#EXTINF'.encode(),
                        1,
                    ),
                ),
                "/file-segments.m3u8": Route(200, hls, media_playlist("file:///etc")),
                "/master.m3u8": Route(
                    200, hls, b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=96000\nvariant.m3u8\n"
                ),
                "/variant.m3u8": Route(200, hls, media_playlist(target.base)),
                "/master-elsewhere.m3u8": Route(
                    200,
                    hls,
                    f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=9\n{target.base}/v.m3u8\n".encode(),
                ),
            }
        )
        config = source_config(
            make_config, allowed_hosts=[f"127.0.0.1:{first.port}"], max_reconnects=1
        )

        async def scenario() -> None:
            async with serving(config) as (_, http):
                for path in (
                    "/segments-elsewhere.m3u8",
                    "/key-elsewhere.m3u8",
                    "/file-segments.m3u8",
                    "/master.m3u8",
                    "/master-elsewhere.m3u8",
                ):
                    info = await failed_with(http, first.base + path)
                    assert info["state"] == "failed", (path, info)
                    assert info["reason"] == REFUSED, (path, info)
            assert target.hits == []
            assert "/variant.m3u8" in first.hits  # the variant was read, to be checked

        run(scenario(), limit_s=3 * TIMEOUT_S)


def test_what_the_hls_demuxer_fetches_later_is_checked_too(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """FFmpeg's HLS demuxer fetches segments and playlist reloads through the puller's checked
    client: a segment redirected to an allowed place is followed; one redirected to a refused
    host, or a refused segment a live playlist adds later (the first playlist did not name it),
    is never fetched and fails the stream with the one refusal."""
    segments = aac_segments(tmp_path, 6.0)
    with Site() as target, Site() as first:
        for k, data in enumerate(segments):
            first.routes[f"/s{k}.ts"] = target.routes[f"/s{k}.ts"] = Route(200, TS_TYPE, data)
        first.routes["/r1.ts"] = redirect("/s1.ts")
        first.routes["/r3.ts"] = redirect(f"{target.base}/s3.ts")
        redirecting = media_playlist(["/s0.ts", "/r1.ts", "/s2.ts", "/r3.ts", "/s4.ts"])
        first.routes["/redirecting.m3u8"] = Route(200, HLS_TYPE, redirecting)
        live = media_playlist(["/s0.ts", "/s1.ts", "/s2.ts"], ended=False)
        first.routes["/live.m3u8"] = Route(200, HLS_TYPE, live)
        config = source_config(
            make_config, allowed_hosts=[f"127.0.0.1:{first.port}"], max_reconnects=1
        )

        async def scenario() -> None:
            async with serving(config) as (server, http):
                reply = await post(http, f"{first.base}/redirecting.m3u8")
                assert reply.status_code == 201, reply.text
                stream_id = reply.json()["stream_id"]
                async with updates(server, stream_id) as conn:
                    await next_message(conn, of_type("genre.update"))
                    ended = await next_message(conn, of_type("stream.ended"))
                assert ended["reason"] == REFUSED, ended
                assert "/s1.ts" in first.hits and "/s4.ts" not in first.hits, first.hits

                first.hits.clear()
                reply = await post(http, f"{first.base}/live.m3u8")
                assert reply.status_code == 201, reply.text
                stream_id = reply.json()["stream_id"]
                await hit(first, "/s0.ts")  # FFmpeg is reading the first playlist
                later = ["/s1.ts", "/s2.ts", f"{target.base}/s3.ts"]
                first.routes["/live.m3u8"] = Route(
                    200, HLS_TYPE, media_playlist(later, first=1, ended=False)
                )
                info = await ended_info(http, stream_id)
                assert info["state"] == "failed" and info["reason"] == REFUSED, info
                assert info["reconnects"] == 0, "a refused source is not retried"
                assert first.hits.count("/live.m3u8") >= 2, first.hits  # a reload happened
            assert target.hits == []

        run(scenario(), limit_s=3 * TIMEOUT_S)


def test_playlists_read_for_the_check_are_not_fetched_again(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """The puller reads a master playlist and its variant to check them; FFmpeg then gets both
    from memory, so each is asked for once, and the stream plays."""
    segments = aac_segments(tmp_path, 4.0)
    with Site() as site:
        for k, data in enumerate(segments):
            site.routes[f"/s{k}.ts"] = Route(200, TS_TYPE, data)
        uris = [f"/s{k}.ts" for k in range(len(segments))]
        site.routes["/variant.m3u8"] = Route(200, HLS_TYPE, media_playlist(uris))
        master = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=96000\nvariant.m3u8\n"
        site.routes["/master.m3u8"] = Route(200, HLS_TYPE, master)
        config = source_config(make_config, allow_private_addresses=True)

        async def scenario() -> None:
            async with serving(config) as (server, http):
                reply = await post(http, f"{site.base}/master.m3u8")
                assert reply.status_code == 201, reply.text
                stream_id = reply.json()["stream_id"]
                async with updates(server, stream_id) as conn:
                    await next_message(conn, of_type("genre.update"))
                assert "/s1.ts" in site.hits, site.hits
                assert site.hits.count("/master.m3u8") == 1, site.hits
                assert site.hits.count("/variant.m3u8") == 1, site.hits

        run(scenario(), limit_s=3 * TIMEOUT_S)


def test_a_reloaded_playlist_is_bounded_like_the_first(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """A live playlist that grows past ``MAX_PLAYLIST_BYTES`` at a reload (read by FFmpeg through
    the checked client) ends the connection, as the first playlist would; the stream fails with
    the reason once its reconnects are spent."""
    segments = aac_segments(tmp_path, 4.0)
    huge = media_playlist(["/s1.ts"] * 70_000, ended=False)
    assert len(huge) > MAX_PLAYLIST_BYTES
    with Site() as site:
        for k, data in enumerate(segments):
            site.routes[f"/s{k}.ts"] = Route(200, TS_TYPE, data)
        live = media_playlist(["/s0.ts", "/s1.ts"], ended=False)
        site.routes["/live.m3u8"] = Route(200, HLS_TYPE, live)
        config = source_config(make_config, allow_private_addresses=True, max_reconnects=1)

        async def scenario() -> None:
            async with serving(config) as (_, http):
                reply = await post(http, f"{site.base}/live.m3u8")
                assert reply.status_code == 201, reply.text
                stream_id = reply.json()["stream_id"]
                await hit(site, "/s0.ts")  # FFmpeg is reading the first playlist
                site.routes["/live.m3u8"] = Route(200, HLS_TYPE, huge)
                info = await ended_info(http, stream_id)
                assert info["state"] == "failed", info
                assert f"HLS playlist larger than {MAX_PLAYLIST_BYTES} bytes" in info["reason"]

        run(scenario(), limit_s=3 * TIMEOUT_S)


def test_a_body_ffmpeg_would_read_as_a_playlist_opens_nothing(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """A body that is not declared HLS but that FFmpeg's probe takes for a playlist (its URL
    ends in ``.m3u8`` after a ``?``): FFmpeg gets it as a file object with no protocol allowed,
    so it fetches nothing, even from an address the policy would allow."""
    with Site({"/seg0.wav": wav_route(tmp_path)}) as target, Site() as first:
        playlist = (
            "#EXTM3U\n#EXT-X-TARGETDURATION:8\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:8.0,\n{target.base}/seg0.wav\n#EXT-X-ENDLIST\n"
        ).encode()
        first.routes["/radio?f=.m3u8"] = Route(
            200, (("Content-Type", "application/octet-stream"),), playlist
        )
        config = source_config(make_config, allow_private_addresses=True, max_reconnects=1)

        async def scenario() -> None:
            async with serving(config) as (_, http):
                info = await failed_with(http, f"{first.base}/radio?f=.m3u8")
                assert info["state"] == "failed", info
            assert first.hits.count("/radio?f=.m3u8") == 1  # never audio: not tried again
            assert target.hits == []

        run(scenario(), limit_s=3 * TIMEOUT_S)


def test_a_source_that_sends_a_moment_of_audio_and_drops_still_reaches_the_bound(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """Each connection delivers three seconds of audio and closes: a live source lost, again and
    again. Only a connection that delivered ``RECOVERED_S`` of audio starts the failure count
    again, so the stream still fails after ``max_reconnects``."""
    short = encode_audio(tmp_path / "moment.wav", music(3.0, 22050), 22050).read_bytes()
    route = Route(200, (("Content-Type", "audio/wav"),), short, length=False)
    config = source_config(make_config, allow_private_addresses=True, max_reconnects=2)
    assert RECOVERED_S > 3.0

    async def scenario(site: Site) -> None:
        async with serving(config) as (server, http):
            reply = await post(http, f"{site.base}/moment")
            assert reply.status_code == 201, reply.text
            stream_id = reply.json()["stream_id"]
            async with updates(server, stream_id) as conn:
                await next_message(conn, of_type("genre.update"))  # audio did arrive
                ended = await next_message(conn, of_type("stream.ended"))
            assert ended["reason"] == "source failed 3 times in a row; last: end of stream"
            info = await ended_info(http, stream_id)
            assert info["state"] == "failed" and info["reconnects"] == 2, info
        assert site.hits == ["/moment"] * 3

    with Site({"/moment": route}) as site:
        run(scenario(site), limit_s=3 * TIMEOUT_S)


def test_a_live_source_runs_at_most_a_burst_ahead_of_the_clock(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    """A live body (no length) that arrives all at once is decoded up to ``MAX_BURST_S``
    seconds ahead of the wall clock and then at real time, not as fast as it comes."""
    audio = encode_audio(tmp_path / "long.wav", music(40.0, 22050), 22050).read_bytes()
    route = Route(200, (("Content-Type", "audio/wav"),), audio, length=False)
    config = source_config(make_config, allow_private_addresses=True)

    async def scenario(site: Site) -> None:
        async with serving(config) as (_, http):
            reply = await post(http, f"{site.base}/long.wav")
            assert reply.status_code == 201, reply.text
            stream_id = reply.json()["stream_id"]
            deadline = time.monotonic() + TIMEOUT_S
            while (await stream_info(http, stream_id))["state"] != "live":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            live_at = time.monotonic()
            await asyncio.sleep(2.0)
            info = await stream_info(http, stream_id)
            elapsed = time.monotonic() - live_at
            assert 5.0 <= info["stream_time_s"] <= MAX_BURST_S + elapsed + 1.0, (info, elapsed)

    with Site({"/long.wav": route}) as site:
        run(scenario(site), limit_s=3 * TIMEOUT_S)


def test_a_source_that_never_worked_is_tried_first_connect_attempts_times(
    make_config: Callable[..., Config],
) -> None:
    port = free_port()
    dead = f"http://127.0.0.1:{port}/nothing.mp3"
    config = source_config(
        make_config, allow_private_addresses=True, first_connect_attempts=3, max_reconnects=1
    )

    async def scenario() -> None:
        async with serving(config) as (server, http):
            info = await failed_with(http, dead)
            assert info["state"] == "failed" and info["reconnects"] == 2
            last = f"connection refused by 127.0.0.1:{port}"
            assert info["reason"] == f"source failed 3 times in a row; last: {last}", info
            assert info["last_error"] == last, info
            assert not server.service.pullers and not server.service.streams

    run(scenario(), limit_s=3 * TIMEOUT_S)


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        (
            "http://u:pw@radio.example:8000/live.mp3?token=abc",
            "http://radio.example:8000/live.mp3?…",
        ),
        ("https://radio.example/a", "https://radio.example/a"),
        ("HTTP://Radio.Example/", "http://radio.example/"),
        ("http://[::1]:80/x?a=1", "http://[::1]:80/x?…"),
        ("/srv/media/x.mp3", "/srv/media/x.mp3"),
        ("http://radio.example:99999/x", "http://radio.example:99999/x"),  # not a URL to show
    ],
)
def test_a_source_is_shown_without_user_password_or_query(source: str, shown: str) -> None:
    assert shown_source(source) == shown
