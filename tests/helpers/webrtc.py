"""A real aiortc peer that sends music, and the offer/answer steps against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.helpers.audio import music

#: The rate (Hz) of WebRTC audio, and the samples of one 20 ms frame at it.
WEBRTC_RATE = 48000
FRAME_SAMPLES = 960


class MusicTrack(MediaStreamTrack):  # type: ignore[misc]
    """Audio from a numpy array, paced in real time: 20 ms s16 stereo frames at 48 kHz, looped."""

    kind = "audio"

    def __init__(self, audio: np.ndarray) -> None:
        super().__init__()
        self._pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        self._pts = 0
        self._t0: float | None = None

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        wait = self._t0 + self._pts / WEBRTC_RATE - now
        if wait > 0:
            await asyncio.sleep(wait)
        rows = np.arange(self._pts, self._pts + FRAME_SAMPLES) % len(self._pcm)
        frame = av.AudioFrame.from_ndarray(
            self._pcm[rows].reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = WEBRTC_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, WEBRTC_RATE)
        self._pts += FRAME_SAMPLES
        return frame


def client_peer(*, codecs: str = "audio/opus") -> RTCPeerConnection:
    """A sending peer with music on one audio transceiver limited to ``codecs`` (a MIME type)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(MusicTrack(music(6.0, WEBRTC_RATE)), direction="sendonly")
    capabilities = RTCRtpSender.getCapabilities("audio")
    assert capabilities is not None
    transceiver.setCodecPreferences([c for c in capabilities.codecs if c.mimeType == codecs])
    return pc


def only_loopback(sdp: str) -> str:
    """``sdp`` without the ICE candidates that are not on 127.0.0.1."""
    kept = [
        line
        for line in sdp.split("\r\n")
        if not line.startswith("a=candidate:") or line.split()[4] == "127.0.0.1"
    ]
    return "\r\n".join(kept)


def with_candidates(sdp: str, *candidates: str) -> str:
    """``sdp`` with its ICE candidate lines replaced by ``candidates`` (``a=candidate:`` values),
    put where the first one was."""
    lines = sdp.split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("a=candidate:"))
    rest = [line for line in lines if not line.startswith("a=candidate:")]
    return "\r\n".join([*rest[:at], *(f"a=candidate:{c}" for c in candidates), *rest[at:]])


def host_candidate(address: str, port: int) -> str:
    """An ``a=candidate:`` value: a UDP host candidate at ``address``:``port`` (RTP)."""
    return f"1 1 udp 2130706431 {address} {port} typ host"


class UdpListener(asyncio.DatagramProtocol):
    """Records every datagram its socket receives; ``port`` is the UDP port it is bound to."""

    def __init__(self) -> None:
        self.port = 0
        self.received: list[bytes] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.append(data)
        self.arrived.set()


@contextlib.asynccontextmanager
async def udp_listener(host: str) -> AsyncIterator[UdpListener]:
    """A :class:`UdpListener` bound to a free UDP port on ``host``, closed on exit."""
    transport, listener = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpListener, local_addr=(host, 0)
    )
    listener.port = transport.get_extra_info("sockname")[1]
    try:
        yield listener
    finally:
        transport.close()


def is_stun_binding_request(data: bytes) -> bool:
    """Whether ``data`` is a STUN binding request (RFC 5389: type 0x0001, the magic cookie)."""
    return len(data) >= 20 and data[:2] == b"\x00\x01" and data[4:8] == b"\x21\x12\xa4\x42"


async def offer_json(pc: RTCPeerConnection, name: str = "") -> dict[str, str]:
    """Gather (non-trickle) and return the offer body for POST /webrtc/offer."""
    await pc.setLocalDescription(await pc.createOffer())
    return {"sdp": pc.localDescription.sdp, "type": "offer", "name": name}


async def connect(
    http: httpx.AsyncClient,
    pc: RTCPeerConnection,
    *,
    name: str = "",
    loopback_only: bool = False,
    rewrite: Callable[[str], str] | None = None,
) -> str:
    """Offer (its SDP passed through ``rewrite`` when given), apply the answer; returns the
    stream id."""
    body = await offer_json(pc, name)
    if loopback_only:
        body["sdp"] = only_loopback(body["sdp"])
    if rewrite is not None:
        body["sdp"] = rewrite(body["sdp"])
    reply = await http.post("/webrtc/offer", json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["type"] == "answer"
    assert "a=candidate:" in answer["sdp"] and " 127.0.0.1 " in answer["sdp"]
    sdp = only_loopback(answer["sdp"]) if loopback_only else answer["sdp"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
    stream_id: str = answer["stream_id"]
    return stream_id
