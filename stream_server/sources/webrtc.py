"""Browser microphones over WebRTC: an SDP offer in, an answer out, the remote audio into a stream.

``POST /webrtc/offer`` takes ``{"sdp", "type": "offer", "name"?}`` (non-trickle: the offer carries
its ICE candidates) and answers ``{"sdp", "type": "answer", "stream_id"}``. The peer's first audio
track is received with aiortc (Opus only, decoded to 48 kHz interleaved s16 stereo, 20 ms frames)
and fed, frame by frame, to a stream of kind ``webrtc`` in the same engine as the WebSocket PCM
feed. The stream ends when the track ends, when the connection fails or closes, when the peer has
not connected within ``webrtc.connect_timeout_s`` seconds, or when the server stops; the peer is
closed with it. ``GET /mic`` serves a page that does all of this from the browser's microphone.

Remote ICE candidates: the server sends ICE checks only to the offering client's own address
and to public addresses; peer-reflexive candidates cover the rest. An offer's candidates name
addresses the server would send STUN binding requests to, so a client could otherwise make it send
UDP to any internal address. :func:`filter_candidates` keeps a candidate only when its address
is the address the offer came from (compared as IP addresses, so ``::ffff:127.0.0.1`` is
``127.0.0.1``) or public (:func:`~stream_server.sources.source_policy.address_problem` with private
addresses refused), and at most :data:`MAX_REMOTE_CANDIDATES` of them; it drops private,
loopback, link-local, metadata, multicast and unspecified addresses, mDNS names (``*.local``,
which cannot be checked before they are resolved), non-UDP candidates and lines that cannot be
parsed. The connection forms all the same: the client's own checks reach the server, which
learns each address they come from as a peer-reflexive candidate (RFC 8445 section 7.3.1.3) and
answers there. When it drops a candidate it also drops ``a=end-of-candidates``: the offer then
no longer lists every address the client checks from, and aioice, told that no more candidates
are coming, gives up at once on a component left without a candidate pair (the answer then
carries no candidates at all) instead of waiting for the client's checks.

Pure parts, tested directly: :func:`parse_offer`, :func:`check_sdp`, :func:`filter_candidates`,
:func:`describe_dropped`, :func:`frame_to_pcm`, :func:`with_loopback`, :func:`ice_servers`.
:class:`WebRTCPeer` and :class:`WebRTCGateway` are the event-loop shell.

ICE on one machine: aioice gathers host candidates on every interface except loopback and offers
no switch for it, so :func:`include_loopback_candidates` wraps ``aioice.ice.get_host_addresses``
(which ``Connection.gather_candidates`` looks up on each call) to add ``127.0.0.1`` and ``::1``.
With no STUN server configured the ICE server list is empty (aiortc would otherwise fall back to
a public STUN server), so answering never waits on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aioice.ice
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from stream_server.config import WebRTCConfig
from stream_server.errors import GenrecastError, ProtocolError, WebRTCError
from stream_server.messages import MAX_NAME_CHARS, StartMessage, check_text
from stream_server.sources.source_policy import address_problem
from stream_server.types import StreamHost, StreamSink

log = logging.getLogger(__name__)

#: Sample rate (Hz) and channel count of the PCM fed to a WebRTC stream: aiortc's Opus decoder
#: output.
WEBRTC_SAMPLE_RATE: Final = 48000
WEBRTC_CHANNELS: Final = 2

#: Largest offer body accepted, in bytes (a browser's audio offer is a few kilobytes).
MAX_OFFER_BYTES: Final = 64 * 1024

#: Most remote ICE candidates kept from one offer (a browser offers a few per network interface).
MAX_REMOTE_CANDIDATES: Final = 16

#: Loopback addresses added to aioice's host addresses, by IP version.
LOOPBACK_V4: Final = "127.0.0.1"
LOOPBACK_V6: Final = "::1"

_FULL_SCALE: Final = 32767.0


# -- pure parts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """A validated client offer: the SDP text and the stream name (may be empty)."""

    sdp: str
    name: str = ""


def parse_offer(body: bytes | str) -> Offer:
    """Validate a ``POST /webrtc/offer`` body: a JSON object ``{"sdp", "type": "offer", "name"?}``.

    Raises:
        WebRTCError: (status 400) naming what is wrong.
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise WebRTCError(f"the offer is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WebRTCError('the offer must be a JSON object {"sdp", "type": "offer"}')
    kind = obj.get("type")
    if kind is None:
        raise WebRTCError("the offer has no 'type' (expected 'offer')")
    if kind != "offer":
        raise WebRTCError(f"'type' must be 'offer', got {kind!r}")
    sdp = obj.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise WebRTCError("the offer needs a non-empty string 'sdp'")
    name = obj.get("name")
    try:
        name = "" if name is None else check_text(name, "name", MAX_NAME_CHARS)
    except ProtocolError as exc:
        raise WebRTCError(str(exc)) from None
    return Offer(sdp=sdp, name=name)


def check_sdp(sdp: str) -> None:
    """Refuse an SDP offer that cannot be a browser's encrypted audio offer, before aiortc
    parses it: text UTF-8 cannot carry, no audio section, or no DTLS fingerprint (without one the
    media would not be authenticated).

    Raises:
        WebRTCError: (status 400) naming what is missing.
    """
    try:
        sdp.encode("utf-8")
    except UnicodeEncodeError:
        raise WebRTCError("the SDP offer is not valid text (a lone surrogate)") from None
    lines = [line.strip() for line in sdp.splitlines()]
    if not any(line.startswith("m=audio ") for line in lines):
        raise WebRTCError("the SDP offer has no audio section (m=audio)")
    if not any(line.startswith("a=fingerprint:") for line in lines):
        raise WebRTCError(
            "the SDP offer was rejected: it has no DTLS fingerprint (a=fingerprint), so its "
            "media could not be authenticated"
        )


_CANDIDATE: Final = "a=candidate:"
_END_OF_CANDIDATES: Final = "a=end-of-candidates"
_MAX_PORT: Final = 65535


def _host_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``address`` as an IP address (an IPv4-mapped IPv6 address as its IPv4 address), or
    ``None`` when it is not one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _candidate_problem(
    fields: list[str], client: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> str | None:
    """Why the server may not send ICE checks to the candidate whose ``a=candidate:`` value
    splits into ``fields``, or ``None``; ``client`` is the offering client's address."""
    if len(fields) < 8:
        return "too few fields"
    transport, address, port = fields[2], fields[4], fields[5]
    try:
        port_ok = 0 < int(port) <= _MAX_PORT
    except ValueError:
        port_ok = False
    if not port_ok:
        return "not a valid port"
    if transport.lower() != "udp":
        return "not UDP"
    if address.lower().endswith(".local"):
        return "an mDNS name"
    ip = _host_ip(address)
    if ip is None:
        return "not an IP address"
    if ip == client:
        return None
    return address_problem(str(ip), allow_private=False)


def filter_candidates(
    sdp: str, client: str, *, limit: int = MAX_REMOTE_CANDIDATES
) -> tuple[str, list[str]]:
    """``sdp`` with only the remote ICE candidates the server may send checks to, and why each
    other ``a=candidate:`` line was dropped (one reason per line, in order).

    A candidate is kept when its connection address is ``client`` (the address the offer came
    from, as :func:`~stream_server.serve.guard.client_address` gives it) or a public address, and at
    most ``limit`` are kept. When any is dropped, ``a=end-of-candidates`` is dropped too (see the
    module docstring). Lines are split as aiortc splits them; every other line is kept as it is,
    line ending included.
    """
    client_ip = _host_ip(client)
    lines = sdp.splitlines(keepends=True)
    kept: list[str] = []
    dropped: list[str] = []
    candidates = 0
    for line in lines:
        if not line.startswith(_CANDIDATE):
            kept.append(line)
            continue
        problem = _candidate_problem(line[len(_CANDIDATE) :].split(), client_ip)
        if problem is None and candidates >= limit:
            problem = f"over the limit of {limit} candidates"
        if problem is None:
            candidates += 1
            kept.append(line)
        else:
            dropped.append(problem)
    if dropped:
        kept = [line for line in kept if not _is_end_of_candidates(line)]
    return "".join(kept), dropped


def _is_end_of_candidates(line: str) -> bool:
    """Whether aiortc reads ``line`` (line ending included) as ``a=end-of-candidates``."""
    text = line.splitlines()[0] if line else line
    return text == _END_OF_CANDIDATES or text.startswith(_END_OF_CANDIDATES + ":")


def describe_dropped(dropped: list[str], *, most: int = 8) -> str:
    """The reasons :func:`filter_candidates` gives, as one line: each distinct reason with its
    count, the most common first, at most ``most`` of them (then how many more there are), e.g.
    ``"a loopback address (127.0.0.2): 2, an mDNS name: 1"``."""
    counts = Counter(dropped).most_common()
    parts = [f"{reason}: {n}" for reason, n in counts[:most]]
    if len(counts) > most:
        parts.append(f"{len(counts) - most} other reasons")
    return ", ".join(parts)


def frame_to_pcm(frame: Any, *, sample_rate: int = WEBRTC_SAMPLE_RATE) -> bytes:
    """One decoded audio frame (an ``av.AudioFrame``) as interleaved s16le stereo bytes.

    Any PyAV sample format (packed or planar, integer or float) is converted; mono is copied to
    both channels and more than two channels keep the first two. The result holds
    ``frame.samples * 4`` bytes (2 channels of 2 bytes per sampling instant).

    Raises:
        WebRTCError: if the frame's rate is not ``sample_rate`` Hz (no resampling here).
    """
    if frame.sample_rate != sample_rate:
        raise WebRTCError(
            f"received audio at {frame.sample_rate} Hz; expected {sample_rate} Hz", status=422
        )
    channels = len(frame.layout.channels)
    samples = frame.to_ndarray()
    interleaved = samples.T if frame.format.is_planar else samples.reshape(-1, channels)
    stereo = _to_stereo(np.asarray(interleaved))
    return _to_s16(stereo).astype("<i2", copy=False).tobytes()


def _to_stereo(frames: np.ndarray) -> np.ndarray:
    """``(n, channels)`` -> ``(n, 2)``: mono duplicated, extra channels dropped."""
    if frames.shape[1] == 1:
        return np.repeat(frames, 2, axis=1)
    return frames[:, :2]


def _to_s16(frames: np.ndarray) -> np.ndarray:
    """Samples of any PyAV dtype as int16 at the same level (float full scale is 1.0)."""
    if frames.dtype == np.int16:
        return frames
    if frames.dtype == np.uint8:
        return ((frames.astype(np.int16) - 128) << 8).astype(np.int16)
    if frames.dtype == np.int32:
        return (frames >> 16).astype(np.int16)
    scaled = np.clip(np.nan_to_num(frames.astype(np.float64)), -1.0, 1.0) * _FULL_SCALE
    return np.rint(scaled).astype(np.int16)


def with_loopback(addresses: list[str], *, use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """``addresses`` plus the loopback address of each IP version in use (no duplicates)."""
    extra = [LOOPBACK_V4] if use_ipv4 else []
    if use_ipv6:
        extra.append(LOOPBACK_V6)
    return [*addresses, *(a for a in extra if a not in addresses)]


def ice_servers(stun_server: str) -> list[Any]:
    """The ``RTCIceServer`` list for ``webrtc.stun_server``: empty when it is empty.

    The empty list matters: given none at all, aiortc uses a public STUN server.
    """
    return [RTCIceServer(urls=stun_server)] if stun_server else []


# -- ICE on loopback ----------------------------------------------------------------------------

_loopback_installed = False


def include_loopback_candidates() -> None:
    """Make aioice gather host candidates on loopback too (process-wide; idempotent).

    aioice 0.13 drops ``127.0.0.1`` and ``::1`` in ``get_host_addresses``, which
    ``Connection.gather_candidates`` calls by its module-level name each time it gathers; the
    wrapper keeps every address it returns and adds the loopback ones. A browser on the same
    machine can then reach the server without STUN even where loopback is the only interface.
    """
    global _loopback_installed
    if _loopback_installed:
        return
    original: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return with_loopback(original(use_ipv4, use_ipv6), use_ipv4=use_ipv4, use_ipv6=use_ipv6)

    aioice.ice.get_host_addresses = host_addresses
    _loopback_installed = True


# -- peers --------------------------------------------------------------------------------------


class WebRTCPeer:
    """One browser peer: its ``RTCPeerConnection``, its audio track's pump and its live stream."""

    def __init__(
        self,
        host: StreamHost,
        pc: Any,
        *,
        connect_timeout_s: float,
        on_closed: Callable[[WebRTCPeer], None],
    ) -> None:
        self.host = host
        self.pc = pc
        self.sink: StreamSink | None = None
        self.connect_timeout_s = connect_timeout_s
        self._on_closed = on_closed
        self._track: Any = None
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing: asyncio.Task[None] | None = None
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    @property
    def stream_id(self) -> str | None:
        return self.sink.stream_id if self.sink is not None else None

    @property
    def connected(self) -> bool:
        """Whether the peer has connected (until then it counts as a pending offer)."""
        return self._connected.is_set()

    def start(self, sink: StreamSink) -> None:
        """Feed ``sink`` from the audio track (once it exists) and watch the connect deadline.
        However the stream ends (idle, ``DELETE``, server stop), the connection closes with it."""
        self.sink = sink
        sink.on_end(self._end_from_service)
        self._spawn(self._watch_connect())
        if self._track is not None:
            self._spawn(self._pump(self._track))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: Any) -> None:
        if track.kind != "audio" or self._track is not None:
            return
        self._track = track
        if self.sink is not None and self._closing is None:
            self._spawn(self._pump(track))

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self.close(f"WebRTC connection {state}")

    async def _watch_connect(self) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout_s)
        except TimeoutError:
            self.host.count_error("webrtc_timeout")
            self.close(f"WebRTC peer did not connect within {self.connect_timeout_s:g} s")

    async def _pump(self, track: Any) -> None:
        sink = self.sink
        assert sink is not None
        reason = "the microphone track ended"
        try:
            while not sink.ended:
                frame = await track.recv()
                if not sink.ended:
                    sink.feed(frame_to_pcm(frame))
        except MediaStreamError:
            pass
        except WebRTCError as exc:
            reason = str(exc)
        except Exception as exc:
            log.exception("WebRTC audio of stream %s could not be ingested", self.stream_id)
            reason = f"audio could not be ingested: {exc}"
        self.close(reason)

    def _end_from_service(self, reason: str) -> None:
        self.close(reason, drain=False)

    def close(self, reason: str, *, drain: bool = True) -> asyncio.Task[None]:
        """End the stream with ``reason`` and close the connection; once, whoever asks first."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason, drain))
        return self._closing

    async def _close(self, reason: str, drain: bool) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            with contextlib.suppress(Exception):
                await self.pc.close()
            if self.sink is not None:
                await self.sink.end(reason, drain=drain)
        finally:
            self._on_closed(self)
        log.info("WebRTC peer of stream %s closed: %s", self.stream_id, reason)


class WebRTCGateway:
    """Answers offers and keeps every peer until it closes; :meth:`close` ends them all."""

    def __init__(self, host: StreamHost, config: WebRTCConfig) -> None:
        self.host = host
        self.config = config
        self.peers: set[WebRTCPeer] = set()
        include_loopback_candidates()

    async def answer(self, offer: Offer, client: str = "") -> dict[str, str]:
        """Open a ``webrtc`` stream for ``offer`` from ``client`` (an address); returns
        ``{"sdp", "type", "stream_id"}``.

        Raises:
            WebRTCError: 400 for an offer aiortc rejects or one without Opus audio; 503 while the
                model loads, when ``server.max_streams`` streams are live (or the client's
                share), or when ``webrtc.max_pending`` peers are still connecting.
        """
        cfg = self.config
        pending = sum(1 for peer in self.peers if not peer.connected)
        if pending >= cfg.max_pending:
            raise WebRTCError(
                f"{pending} WebRTC peers are still connecting (limit {cfg.max_pending}); "
                "try again in a moment",
                status=503,
            )
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(cfg.stun_server)))
        peer = WebRTCPeer(
            self.host,
            pc,
            connect_timeout_s=cfg.connect_timeout_s,
            on_closed=self.peers.discard,
        )
        self.peers.add(peer)
        try:
            await _apply_offer(pc, offer.sdp, client)
            try:
                sink = await self.host.open_sink(
                    StartMessage(
                        type="start",
                        sample_rate=WEBRTC_SAMPLE_RATE,
                        channels=WEBRTC_CHANNELS,
                        format="s16le",
                        name=offer.name,
                    ),
                    kind="webrtc",
                    source="webrtc",
                    client=client,
                )
            except ProtocolError as exc:
                raise WebRTCError(str(exc), status=503) from None
            peer.start(sink)
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except _AIORTC_ERRORS as exc:
                raise WebRTCError(f"the SDP offer could not be answered: {exc}") from None
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, GenrecastError) else "the offer failed"
            await asyncio.shield(peer.close(reason, drain=False))
            raise
        answer = pc.localDescription
        return {"sdp": answer.sdp, "type": answer.type, "stream_id": sink.stream_id}

    async def close(self) -> None:
        """Close every peer and end its stream (the server is stopping); never raises."""
        tasks = [peer.close("server stopping", drain=False) for peer in list(self.peers)]
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.error("a WebRTC peer did not close cleanly: %s", result)


#: What aiortc raises for a description it cannot use.
_AIORTC_ERRORS: Final = (
    ValueError,
    TypeError,
    LookupError,
    InvalidAccessError,
    InvalidStateError,
    InternalError,
    OperationError,
)


async def _apply_offer(pc: Any, sdp: str, client: str) -> None:
    """Apply a remote offer from ``client`` (an address) to ``pc`` with one receive-only,
    Opus-only audio transceiver and only the remote candidates :func:`filter_candidates` keeps."""
    check_sdp(sdp)
    sdp, dropped = filter_candidates(sdp, client)
    if dropped:
        log.info(
            "WebRTC offer from %s: dropped %d of its ICE candidates (%s)",
            client,
            len(dropped),
            describe_dropped(dropped),
        )
    transceiver = pc.addTransceiver("audio", direction="recvonly")
    capabilities = RTCRtpReceiver.getCapabilities("audio")
    codecs = capabilities.codecs if capabilities is not None else []
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() == "audio/opus"])
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except OperationError as exc:
        raise WebRTCError(f"the offer has no Opus audio the server can receive ({exc})") from None
    except Exception as exc:  # aiortc parses client text: whatever it raises, the offer is bad
        raise WebRTCError(f"the SDP offer was rejected: {exc or type(exc).__name__}") from None
    if transceiver.mid is None:
        raise WebRTCError("the SDP offer has no audio section (m=audio)")


# -- HTTP ---------------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise WebRTCError(f"the offer is larger than {limit} bytes", status=413)
    return bytes(body)


async def answer_request(gateway: WebRTCGateway, request: Request, client: str) -> Response:
    """``POST /webrtc/offer`` from ``client`` (its address): the answer as JSON, or
    ``{"error"}`` with a 4xx/503 status."""
    try:
        offer = parse_offer(await _read_body(request, MAX_OFFER_BYTES))
        answer = await gateway.answer(offer, client)
    except WebRTCError as exc:
        gateway.host.count_error("webrtc_offer")
        log.info("WebRTC offer refused (%d): %s", exc.status, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    return JSONResponse(answer)
