"""WebRTC ingest: the pure parts directly, then a real server and a real aiortc peer on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aioice.ice
import av
import httpx
import numpy as np
import pytest
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
)
from aiortc.sdp import SessionDescription
from websockets.asyncio.client import ClientConnection

from stream_server.config import Config
from stream_server.inference.model import LoadedModel
from stream_server.serve.server import running_server
from stream_server.sources.webrtc import (
    MAX_OFFER_BYTES,
    MAX_REMOTE_CANDIDATES,
    Offer,
    WebRTCError,
    describe_dropped,
    filter_candidates,
    frame_to_pcm,
    ice_servers,
    include_loopback_candidates,
    parse_offer,
    with_loopback,
)
from tests.helpers.audio import music
from tests.helpers.constants import TIMEOUT_S
from tests.helpers.live import (
    RATE,
    expected_windows,
    get_metrics,
    recv_json,
    run,
    send_audio,
    start_stream,
    stop_stream,
)
from tests.helpers.live import ws as ws_connect
from tests.helpers.webrtc import (
    FRAME_SAMPLES,
    WEBRTC_RATE,
    client_peer,
    connect,
    host_candidate,
    is_stun_binding_request,
    offer_json,
    udp_listener,
    with_candidates,
)

# -- pure parts ---------------------------------------------------------------------------------


def test_parse_offer_accepts_an_offer_with_or_without_a_name() -> None:
    assert parse_offer(b'{"sdp": "v=0\\r\\n", "type": "offer"}') == Offer("v=0\r\n", "")
    assert parse_offer('{"sdp": "v=0", "type": "offer", "name": "desk mic"}') == Offer(
        "v=0", "desk mic"
    )
    assert parse_offer('{"sdp": "v=0", "type": "offer", "name": null}').name == ""


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"type": "offer"}', "'sdp'"),
        (b'{"type": "offer", "sdp": "   "}', "'sdp'"),
        (b'{"type": "offer", "sdp": 5}', "'sdp'"),
        (b'{"sdp": "v=0"}', "no 'type'"),
        (b'{"sdp": "v=0", "type": "answer"}', "'type' must be 'offer', got 'answer'"),
        (b'{"sdp": "v=0", "type": "offer", "name": 3}', "'name'"),
        (json.dumps({"sdp": "v=0", "type": "offer", "name": "x" * 201}).encode(), "'name'"),
    ],
)
def test_parse_offer_names_what_is_wrong(body: bytes, needle: str) -> None:
    with pytest.raises(WebRTCError) as caught:
        parse_offer(body)
    assert needle in str(caught.value)
    assert caught.value.status == 400


def audio_frame(samples: np.ndarray, fmt: str, layout: str, rate: int = WEBRTC_RATE) -> Any:
    """An ``av.AudioFrame`` holding ``samples`` as PyAV lays them out for ``fmt``."""
    frame = av.AudioFrame.from_ndarray(samples, format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def test_frame_to_pcm_packed_s16_stereo_is_passed_through() -> None:
    pcm = np.arange(-FRAME_SAMPLES, FRAME_SAMPLES, dtype=np.int16).reshape(-1, 2) * 16
    data = frame_to_pcm(audio_frame(pcm.reshape(1, -1), "s16", "stereo"))
    assert len(data) == FRAME_SAMPLES * 4
    np.testing.assert_array_equal(np.frombuffer(data, "<i2").reshape(-1, 2), pcm)


def test_frame_to_pcm_converts_planar_float_and_mono() -> None:
    t = np.arange(FRAME_SAMPLES) / WEBRTC_RATE
    left = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    right = np.full(FRAME_SAMPLES, -0.25, dtype=np.float32)
    planar = frame_to_pcm(audio_frame(np.stack([left, right]), "fltp", "stereo"))
    got = np.frombuffer(planar, "<i2").reshape(-1, 2)
    np.testing.assert_allclose(got[:, 0], left * 32767, atol=1)
    np.testing.assert_array_equal(got[:, 1], np.full(FRAME_SAMPLES, round(-0.25 * 32767)))

    mono = frame_to_pcm(audio_frame(left.reshape(1, -1), "flt", "mono"))
    got = np.frombuffer(mono, "<i2").reshape(-1, 2)
    np.testing.assert_array_equal(got[:, 0], got[:, 1])
    np.testing.assert_allclose(got[:, 0], left * 32767, atol=1)


def test_frame_to_pcm_clips_floats_and_scales_wider_integers() -> None:
    loud = np.array([[2.0, -3.0, np.nan, 0.5]], dtype=np.float32)
    got = np.frombuffer(frame_to_pcm(audio_frame(loud, "flt", "stereo")), "<i2")
    np.testing.assert_array_equal(got, [32767, -32767, 0, 16384])
    wide = np.array([[1 << 30, -(1 << 30)]], dtype=np.int32)
    got = np.frombuffer(frame_to_pcm(audio_frame(wide, "s32", "stereo")), "<i2")
    np.testing.assert_array_equal(got, [1 << 14, -(1 << 14)])


def test_frame_to_pcm_refuses_another_rate() -> None:
    frame = audio_frame(np.zeros((1, 160), dtype=np.int16), "s16", "mono", rate=8000)
    with pytest.raises(WebRTCError, match="8000 Hz; expected 48000 Hz"):
        frame_to_pcm(frame)


def test_with_loopback_adds_each_family_once() -> None:
    assert with_loopback(["192.0.2.2"], use_ipv4=True, use_ipv6=False) == ["192.0.2.2", "127.0.0.1"]
    assert with_loopback(["fd00::2"], use_ipv4=False, use_ipv6=True) == ["fd00::2", "::1"]
    assert with_loopback(["127.0.0.1"], use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    assert with_loopback([], use_ipv4=False, use_ipv6=False) == []


def test_loopback_candidates_are_gathered_once_included() -> None:
    include_loopback_candidates()
    include_loopback_candidates()
    addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    assert addresses.count("127.0.0.1") == 1


def test_ice_servers_are_empty_without_stun() -> None:
    assert ice_servers("") == []
    [server] = ice_servers("stun:stun.example.org:3478")
    assert server.urls == "stun:stun.example.org:3478"


# -- remote candidates -------------------------------------------------------------------------

#: An offer's lines around its candidates (CRLF line endings, as browsers send them).
SDP_HEAD = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
)
SDP_TAIL = "a=end-of-candidates\r\na=ice-ufrag:abcd\r\na=fingerprint:sha-256 AB:CD\r\n"


def sdp_with(*candidates: str) -> str:
    """An offer whose candidates are ``candidates`` (``a=candidate:`` values)."""
    return SDP_HEAD + "".join(f"a=candidate:{c}\r\n" for c in candidates) + SDP_TAIL


def test_public_candidates_are_kept_and_the_offer_is_unchanged() -> None:
    offer = sdp_with(
        host_candidate("8.8.8.8", 5000),
        host_candidate("2001:4860:4860::8888", 5001),
        "2 1 UDP 1694498815 1.1.1.1 61000 typ srflx raddr 10.0.0.2 rport 5000",
    )
    assert filter_candidates(offer, "127.0.0.1") == (offer, [])


@pytest.mark.parametrize(
    ("client", "address"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", "::ffff:127.0.0.1"),
        ("::ffff:192.168.1.20", "::FFFF:C0A8:0114"),
        ("fd00::1", "fd00:0:0:0::0001"),
        ("::1", "0:0:0:0:0:0:0:1"),
    ],
)
def test_candidates_at_the_clients_own_address_are_kept_at_any_port(
    client: str, address: str
) -> None:
    offer = sdp_with(host_candidate(address, 1), host_candidate(address, 65535))
    assert filter_candidates(offer, client) == (offer, [])


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (host_candidate("10.1.2.4", 5000), "a private address (10.1.2.4)"),
        (host_candidate("192.168.1.1", 5000), "a private address (192.168.1.1)"),
        (host_candidate("fd00::2", 5000), "a private address (fd00::2)"),
        (host_candidate("127.0.0.2", 5000), "a loopback address (127.0.0.2)"),
        (host_candidate("::1", 5000), "a loopback address (::1)"),
        (host_candidate("::ffff:127.0.0.1", 5000), "a loopback address (127.0.0.1)"),
        (host_candidate("169.254.1.1", 5000), "a link-local address (169.254.1.1)"),
        (host_candidate("fe80::1", 5000), "a link-local address (fe80::1)"),
        (host_candidate("169.254.169.254", 80), "a cloud metadata address (169.254.169.254)"),
        (host_candidate("::ffff:a9fe:a9fe", 80), "a cloud metadata address (169.254.169.254)"),
        (host_candidate("0.0.0.0", 5000), "an unspecified address (0.0.0.0)"),
        (host_candidate("::", 5000), "an unspecified address (::)"),
        (host_candidate("224.0.0.251", 5353), "a multicast address (224.0.0.251)"),
        (host_candidate("100.64.0.1", 5000), "a private address (100.64.0.1)"),
        (host_candidate("3f1c2a4b-6c1e-4f6a-9b0e-1d2c3b4a5f60.local", 5000), "an mDNS name"),
        (host_candidate("printer.LOCAL", 5000), "an mDNS name"),
        (host_candidate("example.org", 5000), "not an IP address"),
        (host_candidate("8.8.8.8", 0), "not a valid port"),
        (host_candidate("8.8.8.8", 65536), "not a valid port"),
        ("1 1 udp 2130706431 8.8.8.8 http typ host", "not a valid port"),
        ("1 1 tcp 1518280447 8.8.8.8 9 typ host tcptype active", "not UDP"),
        ("1 1 udp 2130706431 8.8.8.8 5000", "too few fields"),
        ("", "too few fields"),
    ],
)
def test_other_candidates_are_dropped_with_the_reason(candidate: str, reason: str) -> None:
    public = host_candidate("8.8.8.8", 5000)
    sdp, dropped = filter_candidates(sdp_with(public, candidate, public), "10.1.2.3")
    assert dropped == [reason]
    # Only that line goes, and end-of-candidates with it: the client's checks still arrive.
    expected = sdp_with(public, public).replace("a=end-of-candidates\r\n", "")
    assert sdp == expected


def test_candidates_over_the_limit_are_dropped() -> None:
    public = [host_candidate(f"8.8.8.{i}", 5000) for i in range(1, MAX_REMOTE_CANDIDATES + 3)]
    mine = host_candidate("10.1.2.3", 5000)
    other = host_candidate("10.1.2.4", 5000)
    offer = sdp_with(other, *public[:MAX_REMOTE_CANDIDATES], mine, *public[MAX_REMOTE_CANDIDATES:])
    sdp, dropped = filter_candidates(offer, "10.1.2.3")
    assert dropped == ["a private address (10.1.2.4)"] + 3 * [
        f"over the limit of {MAX_REMOTE_CANDIDATES} candidates"
    ]
    kept = [line[len("a=candidate:") :] for line in sdp.split("\r\n") if "candidate:" in line]
    assert kept == public[:MAX_REMOTE_CANDIDATES]

    sdp, dropped = filter_candidates(sdp_with(mine, *public[:2]), "10.1.2.3", limit=2)
    assert dropped == ["over the limit of 2 candidates"]
    assert sdp == SDP_HEAD + f"a=candidate:{mine}\r\na=candidate:{public[0]}\r\n" + (
        SDP_TAIL.replace("a=end-of-candidates\r\n", "")
    )


def test_an_unknown_client_keeps_only_public_candidates() -> None:
    offer = sdp_with(host_candidate("127.0.0.1", 5000), host_candidate("8.8.8.8", 5000))
    sdp, dropped = filter_candidates(offer, "?")
    assert dropped == ["a loopback address (127.0.0.1)"]
    assert "127.0.0.1" not in sdp and " 8.8.8.8 5000 " in sdp


def test_other_lines_keep_their_bytes_and_line_endings() -> None:
    odd = (
        "v=0\no=- 1 1 IN IP4 0.0.0.0\r\na=x-custom: trailing space \r\n"
        "a=candidate:1 1 udp 1 10.9.9.9 5000 typ host\r\n"
        "a=end-of-candidates:extra\n\r\n a=candidate:not at the start of a line\r\nlast"
    )
    sdp, dropped = filter_candidates(odd, "127.0.0.1")
    assert dropped == ["a private address (10.9.9.9)"]
    assert sdp == (
        "v=0\no=- 1 1 IN IP4 0.0.0.0\r\na=x-custom: trailing space \r\n"
        "\r\n a=candidate:not at the start of a line\r\nlast"
    )


def test_lines_are_split_as_aiortc_splits_them() -> None:
    """A candidate hidden after a vertical tab or a form feed is a line of its own to aiortc."""
    offer = (
        SDP_HEAD
        + "a=candidate:"
        + host_candidate("8.8.8.8", 5000)
        + "\x0ba=candidate:"
        + host_candidate("10.0.0.1", 5000)
        + "\x0c\x1ca=candidate:"
        + host_candidate("169.254.169.254", 80)
        + "\r\n"
        + SDP_TAIL
    )
    assert len(SessionDescription.parse(offer).media[0].ice_candidates) == 3
    sdp, dropped = filter_candidates(offer, "127.0.0.1")
    assert len(dropped) == 2
    [media] = SessionDescription.parse(sdp).media
    assert [c.ip for c in media.ice_candidates] == ["8.8.8.8"]
    assert not media.ice_candidates_complete


def test_describe_dropped_counts_each_reason() -> None:
    assert describe_dropped([]) == ""
    reasons = ["an mDNS name", "a loopback address (127.0.0.2)", "an mDNS name"]
    assert describe_dropped(reasons) == "an mDNS name: 2, a loopback address (127.0.0.2): 1"
    many = [f"a private address (10.0.0.{i})" for i in range(10)]
    assert describe_dropped(many, most=3) == (
        "a private address (10.0.0.0): 1, a private address (10.0.0.1): 1, "
        "a private address (10.0.0.2): 1, 7 other reasons"
    )


# -- a real peer --------------------------------------------------------------------------------


async def messages_until(
    sub: ClientConnection, done: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Messages from ``sub`` up to and including the first one ``done`` accepts."""
    out = []
    while True:
        message = await recv_json(sub)
        out.append(message)
        if done(message):
            return out


def is_ended(stream_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "stream.ended" and m["stream_id"] == stream_id


async def wait_for_state(pc: RTCPeerConnection, states: set[str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while pc.connectionState not in states:
        assert time.monotonic() < deadline, f"peer still {pc.connectionState}"
        await asyncio.sleep(0.05)


def test_webrtc_peer_feeds_a_stream_until_it_closes(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        async with (
            running_server(make_config(), model=tiny_model) as server,
            httpx.AsyncClient(base_url=server.http_url) as http,
            ws_connect(server, "/ws/updates") as sub,
        ):
            client = client_peer()
            try:
                stream_id = await connect(http, client, name="desk mic")
                started = await messages_until(sub, lambda m: m["type"] == "stream.started")
                assert started[-1]["stream_id"] == stream_id
                assert started[-1]["kind"] == "webrtc"
                updates: list[dict[str, Any]] = []
                while len(updates) < 3:
                    message = await recv_json(sub)
                    if message["type"] == "genre.update" and message["stream_id"] == stream_id:
                        updates.append(message)
                assert client.connectionState == "connected"
                for update in updates:
                    assert update["genre"] in tiny_model.labels
                    assert 0.0 <= update["confidence"] <= 1.0
                times = [u["stream_time_s"] for u in updates]
                assert times == sorted(times) and times[0] >= 2.0  # a full 2 s window first

                streams = (await http.get("/streams")).json()["streams"]
                [mine] = [s for s in streams if s["stream_id"] == stream_id]
                assert mine["kind"] == "webrtc" and mine["state"] == "live"
                assert mine["name"] == "desk mic"
                assert (mine["sample_rate"], mine["channels"]) == (48000, 2)
                assert mine["stream_time_s"] >= times[-1]
            finally:
                await client.close()

            rest = await messages_until(sub, is_ended(stream_id))
            ended = rest[-1]
            assert ended["reason"] in {"WebRTC connection closed", "the microphone track ended"}
            assert ended["windows_computed"] >= len(updates)
            assert stream_id not in server.service.streams
            streams = (await http.get("/streams")).json()["streams"]
            [mine] = [s for s in streams if s["stream_id"] == stream_id]
            assert mine["state"] == "ended" and mine["kind"] == "webrtc"
            metrics = await get_metrics(http)
            assert metrics["genrecast_active_streams"] == 0

    run(scenario())


def test_webrtc_connects_over_loopback_alone(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    """Both sides see only 127.0.0.1 candidates: ICE must succeed on loopback with no STUN."""

    async def scenario() -> None:
        include_loopback_candidates()  # for the client peer, gathered in this process too
        async with (
            running_server(make_config(), model=tiny_model) as server,
            httpx.AsyncClient(base_url=server.http_url) as http,
            ws_connect(server, "/ws/updates") as sub,
        ):
            client = client_peer()
            try:
                stream_id = await connect(http, client, loopback_only=True)
                await messages_until(
                    sub, lambda m: m["type"] == "genre.update" and m["stream_id"] == stream_id
                )
                assert client.connectionState == "connected"
            finally:
                await client.close()
            await messages_until(sub, is_ended(stream_id))

    run(scenario())


def test_bad_offers_get_400_and_other_streams_carry_on(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        async with (
            running_server(make_config(), model=tiny_model) as server,
            httpx.AsyncClient(base_url=server.http_url) as http,
            ws_connect(server, "/ws/ingest") as ingest,
        ):
            audio = music(5.0, RATE)
            healthy = await start_stream(ingest, name="healthy")
            await send_audio(ingest, audio[: len(audio) // 2])

            async def refused(content: bytes, needle: str, status: int = 400) -> None:
                reply = await http.post(
                    "/webrtc/offer", content=content, headers={"content-type": "application/json"}
                )
                assert reply.status_code == status, reply.text
                assert needle in reply.json()["error"]

            def body(**fields: Any) -> bytes:
                return json.dumps({"type": "offer", **fields}).encode()

            await refused(b"{not json", "not valid JSON")
            await refused(b'"offer"', "JSON object")
            await refused(body(), "'sdp'")
            await refused(json.dumps({"sdp": "v=0"}).encode(), "no 'type'")
            await refused(body(sdp="v=0", type="answer"), "'type' must be 'offer'")
            await refused(body(sdp="garbage"), "no audio section")
            no_ice = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n" + (
                "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
                "a=rtpmap:111 opus/48000/2\r\n"
            )
            await refused(body(sdp=no_ice), "SDP offer was rejected")
            await refused(body(sdp="v=0", pad="x" * MAX_OFFER_BYTES), "larger than", 413)

            video = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pcmu = client_peer(codecs="audio/PCMU")
            try:
                video.addTransceiver("video", direction="sendonly")
                await refused(json.dumps(await offer_json(video)).encode(), "no audio section")
                await refused(json.dumps(await offer_json(pcmu)).encode(), "no Opus audio")
            finally:
                await video.close()
                await pcmu.close()

            await send_audio(ingest, audio[len(audio) // 2 :])
            ended = await stop_stream(ingest)
            assert ended["stream_id"] == healthy
            assert ended["windows_computed"] + ended["windows_skipped"] == expected_windows(
                5.0, 2.0, 0.5
            )
            assert ended["windows_computed"] >= 1

            # Nothing was left open by the refused offers, and a good offer is still answered.
            assert not server.service.streams
            client = client_peer()
            try:
                stream_id = await connect(http, client)
                assert stream_id in server.service.streams
            finally:
                await client.close()
            metrics = await get_metrics(http)
            assert metrics["genrecast_errors_total{kind=webrtc_offer}"] == 10

    run(scenario())


def test_a_peer_that_never_connects_is_dropped(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        config = make_config(webrtc={"connect_timeout_s": 1.0})
        async with (
            running_server(config, model=tiny_model) as server,
            httpx.AsyncClient(base_url=server.http_url) as http,
            ws_connect(server, "/ws/updates") as sub,
        ):
            client = client_peer()
            try:
                reply = await http.post("/webrtc/offer", json=await offer_json(client))
                stream_id = reply.json()["stream_id"]  # the answer is never applied
                t0 = time.monotonic()
                ended = (await messages_until(sub, is_ended(stream_id)))[-1]
                assert 0.8 <= time.monotonic() - t0 <= 5.0
            finally:
                await client.close()
            assert ended["reason"] == "WebRTC peer did not connect within 1 s"
            assert ended["windows_computed"] == 0
            assert not server.service.streams
            metrics = await get_metrics(http)
            assert metrics["genrecast_errors_total{kind=webrtc_timeout}"] == 1

    run(scenario())


def test_stopping_the_server_closes_its_peers(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    async def scenario() -> None:
        client = client_peer()
        try:
            async with running_server(make_config(), model=tiny_model) as server:
                async with httpx.AsyncClient(base_url=server.http_url) as http:
                    stream_id = await connect(http, client)
                await wait_for_state(client, {"connected"})
                watcher = server.service.hub.subscribe(stream_id)
            # The server has stopped: the stream ended with it and the peer was closed.
            published = [
                json.loads(watcher.queue.get_nowait()) for _ in range(watcher.queue.qsize())
            ]
            ended = [m for m in published if m["type"] == "stream.ended"]
            assert [m["reason"] for m in ended] == ["server stopping"]
            assert not server.service.streams
            await wait_for_state(client, {"closed", "failed"})
        finally:
            await client.close()

    run(scenario())


@pytest.mark.parametrize(
    ("address", "checked"),
    [("127.0.0.2", False), ("127.0.0.1", True)],
    ids=["another-loopback-address", "the-clients-address"],
)
def test_the_server_sends_checks_only_to_the_clients_own_address(
    make_config: Callable[..., Config],
    tiny_model: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    address: str,
    checked: bool,
) -> None:
    """The offer's only candidate is a UDP socket of the test's. At another loopback address
    than the client's (127.0.0.1) the server sends it nothing and connects from the client's own
    checks (a peer-reflexive candidate); at the client's address it sends its checks there."""
    include_loopback_candidates()
    # Both peers gather on 127.0.0.1 alone, so no check goes to another address of this machine.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    caplog.set_level(logging.INFO, logger="stream_server.sources.webrtc")

    async def scenario() -> None:
        async with (
            running_server(make_config(), model=tiny_model) as server,
            httpx.AsyncClient(base_url=server.http_url) as http,
            ws_connect(server, "/ws/updates") as sub,
            udp_listener(address) as target,
        ):
            client = client_peer()
            try:
                candidate = host_candidate(address, target.port)
                stream_id = await connect(
                    http,
                    client,
                    loopback_only=True,
                    rewrite=lambda sdp: with_candidates(sdp, candidate),
                )
                await messages_until(
                    sub, lambda m: m["type"] == "genre.update" and m["stream_id"] == stream_id
                )
                assert client.connectionState == "connected"
                if checked:
                    await asyncio.wait_for(target.arrived.wait(), 2.0)
                else:
                    await asyncio.sleep(2.0)
            finally:
                await client.close()
            await messages_until(sub, is_ended(stream_id))

        if checked:
            assert target.received and all(map(is_stun_binding_request, target.received))
            assert "of its ICE candidates" not in caplog.text
        else:
            assert target.received == []
            dropped = f"dropped 1 of its ICE candidates (a loopback address ({address}): 1)"
            assert dropped in caplog.text

    run(scenario())
