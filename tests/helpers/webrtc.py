"""A real aiortc peer that sends music, and the offer/answer steps against a real server."""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.conftest import music

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


async def offer_json(pc: RTCPeerConnection, name: str = "") -> dict[str, str]:
    """Gather (non-trickle) and return the offer body for POST /webrtc/offer."""
    await pc.setLocalDescription(await pc.createOffer())
    return {"sdp": pc.localDescription.sdp, "type": "offer", "name": name}


async def connect(
    http: httpx.AsyncClient, pc: RTCPeerConnection, *, name: str = "", loopback_only: bool = False
) -> str:
    """Offer, apply the answer; returns the stream id."""
    body = await offer_json(pc, name)
    if loopback_only:
        body["sdp"] = only_loopback(body["sdp"])
    reply = await http.post("/webrtc/offer", json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["type"] == "answer"
    assert "a=candidate:" in answer["sdp"] and " 127.0.0.1 " in answer["sdp"]
    sdp = only_loopback(answer["sdp"]) if loopback_only else answer["sdp"]
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
    stream_id: str = answer["stream_id"]
    return stream_id
