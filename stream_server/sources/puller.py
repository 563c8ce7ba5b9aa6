"""Streams the server pulls itself: internet radio, HLS, files in the media folder.

``POST /streams {"url": ...}`` opens a live stream of kind ``"url"`` and a :class:`Puller` whose
worker thread connects, decodes packet by packet (:func:`stream_server.media.decode.iter_pcm`:
corrupt packets are skipped and counted), resamples statefully to mono float32 at the model's rate
and hands ``chunk_s`` blocks to its :class:`~stream_server.types.StreamSink` on the event loop with
``loop.call_soon_threadsafe``. The loop never waits on the network or the decoder.

* **What may be pulled** is decided by :class:`~stream_server.sources.source_policy.SourcePolicy`
  before the stream exists and again at every connection: ``http``/``https`` URLs of hosts that
  resolve only to allowed addresses, and regular files inside ``sources.media_dir``. A refusal
  ends the stream at once in state ``"failed"``.
* **HTTP(S)** is fetched with ``httpx`` asking for ICY metadata (``Icy-MetaData: 1``) through
  :mod:`stream_server.sources.web_fetch`: every TCP connection resolves the host, checks every
  address and connects only to a checked one (no window between check and connect), and redirects
  are followed there, at most five, each new URL checked. The body, with the metadata blocks taken
  out (:class:`IcyDemuxer`), is what PyAV demuxes, with a format hint from the ``Content-Type``
  (:func:`format_hint`). Each new ``StreamTitle`` is a track change. An old SHOUTcast server
  that answers ``ICY 200 OK`` (not HTTP) is asked again by hand over a checked connection and
  read the same way, titles included.
* **HLS** (``application/vnd.apple.mpegurl``, ``.m3u8``): the playlist, and in a master playlist
  each variant playlist, is read here and the host of every URI it names is checked, so a
  playlist naming a refused host fails at once. Then FFmpeg's ``hls`` demuxer reads it, but every
  playlist reload, segment and redirect it asks for is fetched by :class:`HlsInput` (PyAV's
  ``io_open``) through the same checked client: FFmpeg itself opens no connection. Encrypted
  segments are not supported.
* **FFmpeg never opens anything itself**: a body read here, or a media file (opened here, after
  its check), is handed over as a file object with an empty ``protocol_whitelist``, so a playlist
  or ``ffconcat`` script inside it cannot make FFmpeg open any file or URL.
* **Pacing**: a finite source (a local file, an HTTP body with a ``Content-Length``, a
  container with a known duration) is paced at real time and ends the stream at its end. A live
  source paces itself, but may run at most :data:`MAX_BURST_S` seconds of audio ahead of the wall
  clock (the burst a radio server sends on connect); beyond that it is read at real time.
* **A source that never delivered audio fails fast**: its first failed connection (or its
  ``first_connect_attempts``-th) ends the stream in state ``"failed"`` with the reason in words
  (:func:`describe_failure`: ``HTTP 404 Not Found from http://host/path``, ``connection refused
  by 127.0.0.1:8000``, ``host not found: radio.example``, ``no audio for 10 s``, ``not an audio
  stream (text/html)``), listed by ``GET /streams``. A stream taken over from another node of a
  cluster counts as one that delivered audio.
* **Reconnects**, once a source has delivered audio: the end of a live source, a connection
  error, or no audio for ``stall_s`` seconds drops the connection; the puller reconnects after a
  capped exponential backoff (:class:`ReconnectPolicy`) and keeps the stream id. Each failed
  connection's reason goes to the stream (its ``last_error``). The gap is marked on
  the timeline (:meth:`StreamSession.mark_gap`): the open segment closes and stream time jumps
  forward by the wall-clock length of the gap. After ``max_reconnects`` failed connections in a
  row (0: never) the stream ends in state ``"failed"``; the reason is kept with it
  (``GET /streams``). Only a connection that delivered :data:`RECOVERED_S` seconds of audio
  starts the count again, so a source that sends a moment of audio and drops, again and again,
  still fails.

States (:func:`transition`): ``connecting`` → ``live`` ⇄ ``reconnecting``, and ``ended`` /
``failed`` at the end. The pure parts (:func:`format_hint`, :class:`ReconnectPolicy`,
:func:`transition`, :class:`IcyDemuxer`, :func:`parse_stream_title`, :func:`describe_failure`)
have no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import av
import httpcore
import httpx
import numpy as np
from av.container import InputContainer

from stream_server.config import SourcesConfig
from stream_server.errors import (
    DecodeError,
    GenrecastError,
    NotHttp,
    SourceRefused,
    SourceStalled,
    StreamStateError,
    exception_chain,
)
from stream_server.media.decode import DecodeStats, Readable, iter_pcm
from stream_server.sources.source_policy import (
    MediaFile,
    SourcePolicy,
    WebUrl,
    is_master_playlist,
    is_url,
    open_media,
    playlist_uris,
)
from stream_server.sources.web_fetch import (
    checked_client,
    fetch,
    icy_get,
    playlist_chunks,
    read_playlist,
    socket_of,
)
from stream_server.types import FloatArray, SourceCounter, StreamSink, StreamState

__all__ = [
    "HLS_OPTIONS",
    "MAX_BURST_S",
    "RECOVERED_S",
    "HlsInput",
    "HttpBody",
    "IcyDemuxer",
    "Puller",
    "ReconnectPolicy",
    "StreamEvent",
    "StreamStateError",
    "describe_failure",
    "format_hint",
    "is_url",
    "parse_stream_title",
    "transition",
]

log = logging.getLogger(__name__)

StreamEvent = Literal["audio", "lost", "finished", "stopped", "gave_up"]

#: Seconds of audio that may wait on the event loop before new chunks are dropped (and counted).
MAX_PENDING_S: Final = 5.0

#: An empty ``protocol_whitelist``: FFmpeg may open nothing itself. Every input is handed over
#: as a file object, and FFmpeg's HLS demuxer opens playlists and segments only through
#: :class:`HlsInput` (PyAV's ``io_open``).
NO_PROTOCOLS: Final = ""

_AVIO_FLAG_WRITE: Final = 2

#: Seconds of audio a live source may deliver ahead of the wall clock since it connected.
MAX_BURST_S: Final = 10.0

#: Most playlists a master playlist may list.
MAX_VARIANT_PLAYLISTS: Final = 16

#: Options of FFmpeg's HLS demuxer: no persistent HTTP connections (they would reuse FFmpeg's
#: own HTTP client, which it does not have here).
HLS_OPTIONS: Final = {"protocol_whitelist": NO_PROTOCOLS, "http_persistent": "0"}

#: Seconds of audio a connection must deliver before its failures stop counting (a source that
#: sends a moment of audio and drops, again and again, still reaches ``max_reconnects``).
RECOVERED_S: Final = 30.0

_MIME_FORMATS: Final[dict[str, str]] = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mpeg3": "mp3",
    "audio/x-mpeg": "mp3",
    "audio/aac": "aac",
    "audio/aacp": "aac",
    "audio/x-aac": "aac",
    "audio/adts": "aac",
    "application/ogg": "ogg",
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/vorbis": "ogg",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/wav": "wav",
    "audio/wave": "wav",
    "audio/x-wav": "wav",
    "audio/webm": "matroska",
    "video/mp2t": "mpegts",
    "application/vnd.apple.mpegurl": "hls",
    "application/x-mpegurl": "hls",
    "audio/mpegurl": "hls",
    "audio/x-mpegurl": "hls",
}


class _Stopped(GenrecastError):
    """The puller was stopped while reading (internal)."""


# -- pure parts ---------------------------------------------------------------------------------


def format_hint(content_type: str | None, url: str = "") -> str | None:
    """The FFmpeg demuxer for an HTTP ``Content-Type`` (parameters ignored), else from the URL.

    ``audio/mpeg`` → ``mp3``, ``audio/aac`` → ``aac`` (ADTS), ``audio/ogg`` and
    ``application/ogg`` → ``ogg``, HLS ``mpegurl`` types or a ``.m3u8`` path → ``hls``; ``None``
    when unknown (FFmpeg then probes the bytes).
    """
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in _MIME_FORMATS:
            return _MIME_FORMATS[mime]
    if urlsplit(url).path.lower().endswith(".m3u8"):
        return "hls"
    return None


@dataclass(frozen=True)
class ReconnectPolicy:
    """Capped exponential backoff, in seconds, and when to give up.

    Attributes:
        min_s: delay before the first reconnect.
        max_s: the delay doubles on each further failure up to this.
        max_reconnects: give up after this many failed reconnects in a row, once the source
            has delivered audio; 0: never.
        first_attempts: connections tried in all before a source that never delivered audio
            is given up (1: none after the first failure).
    """

    min_s: float
    max_s: float
    max_reconnects: int = 0
    first_attempts: int = 1

    @classmethod
    def from_config(cls, config: SourcesConfig) -> ReconnectPolicy:
        return cls(
            config.reconnect_min_s,
            config.reconnect_max_s,
            config.max_reconnects,
            config.first_connect_attempts,
        )

    def delay(self, failures: int, *, went_live: bool = True) -> float | None:
        """Seconds to wait before the next connection, or ``None`` to give up.

        Args:
            failures: connections in a row that ended (the latest included), counting one that
                delivered :data:`RECOVERED_S` of audio as the first: ``1`` after such a source
                is lost or the first connection fails, ``n + 1`` after ``n`` failed.
            went_live: the source has delivered audio (``max_reconnects`` bounds the
                failures); else ``first_attempts`` does.
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, got {failures!r}")
        if not went_live and failures >= self.first_attempts:
            return None
        if went_live and self.max_reconnects and failures > self.max_reconnects:
            return None
        return min(self.max_s, self.min_s * 2.0 ** min(failures - 1, 64))


_TRANSITIONS: Final[dict[tuple[str, str], StreamState]] = {
    ("connecting", "audio"): "live",
    ("live", "audio"): "live",
    ("reconnecting", "audio"): "live",
    ("connecting", "lost"): "reconnecting",
    ("live", "lost"): "reconnecting",
    ("reconnecting", "lost"): "reconnecting",
    **{(s, "finished"): "ended" for s in ("connecting", "live", "reconnecting")},
    **{(s, "stopped"): "ended" for s in ("connecting", "live", "reconnecting")},
    **{(s, "gave_up"): "failed" for s in ("connecting", "live", "reconnecting")},
}


def transition(state: StreamState, event: StreamEvent) -> StreamState:
    """The state after ``event``; ``ended`` and ``failed`` are final.

    Raises:
        StreamStateError: the event is not allowed in ``state``.
    """
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise StreamStateError(f"a pulled stream cannot go from {state!r} on {event!r}") from None


_TITLE = re.compile(r"StreamTitle='(.*?)';(?=\s*$|\s*[A-Za-z]+=)", re.DOTALL)


def parse_stream_title(block: bytes) -> str | None:
    """The ``StreamTitle`` of one ICY metadata block (``StreamTitle='...';...``), or ``None``.

    The block is UTF-8, else Latin-1; trailing NUL padding is ignored. An empty title is ``None``.
    """
    raw = block.rstrip(b"\0")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    match = _TITLE.search(text.strip())
    if match is None:
        return None
    return match.group(1).strip() or None


#: ``Content-Type`` main types and types that are never audio: a body of one that FFmpeg cannot
#: read is ``not an audio stream (<type>)``.
_NOT_AUDIO_TYPES: Final = ("text", "image", "font", "message", "multipart")
_NOT_AUDIO: Final = frozenset(
    {
        "application/json",
        "application/xml",
        "application/xhtml+xml",
        "application/javascript",
        "application/pdf",
        "application/x-www-form-urlencoded",
        "application/problem+json",
    }
)

#: The errno part of an exception's text (``[Errno 111] ``), which says nothing to a reader.
_ERRNO: Final = re.compile(r"\[Errno -?\d+\]\s*")
#: OpenSSL's library code and source line in an ``ssl`` error's text.
_TLS_NOISE: Final = re.compile(r"\[SSL(: [A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)")


def _first(chain: list[BaseException], kind: type[BaseException] | tuple[type, ...]) -> Any:
    return next((e for e in chain if isinstance(e, kind)), None)


def _where(chain: list[BaseException], url: str) -> tuple[str, str]:
    """``(host, "host:port")`` of the request that failed: the one an ``httpx`` error names
    (after redirects), else ``url``."""
    for exc in chain:
        if isinstance(exc, httpx.RequestError):
            try:
                url = str(exc.request.url)
            except RuntimeError:  # an error raised outside a request has none
                continue
            break
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return url, url
    if not host:
        return url, url
    port = port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    shown = f"[{host}]" if ":" in host else host
    return host, f"{shown}:{port}" if port else shown


def _plain(text: str) -> str:
    """``text`` without errno numbers, its first letter lower-case, no final full stop."""
    text = _ERRNO.sub("", text).strip().rstrip(".")
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _tls_text(exc: ssl.SSLError) -> str:
    """What went wrong in TLS, without OpenSSL's codes: ``wrong version number``."""
    reason = getattr(exc, "reason", None)  # set by the ssl module's own errors
    if reason:
        return str(reason).lower().replace("_", " ")
    text = exc.strerror or (str(exc.args[-1]) if exc.args else str(exc))
    text = _TLS_NOISE.sub("", text)
    return _plain(text) or "the handshake failed"


def _mime(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _not_audio(mime: str | None) -> bool:
    return mime is not None and (mime.split("/", 1)[0] in _NOT_AUDIO_TYPES or mime in _NOT_AUDIO)


def describe_failure(
    exc: BaseException,
    *,
    url: str = "",
    content_type: str | None = None,
    stall_s: float | None = None,
    open_timeout_s: float | None = None,
) -> str:
    """Why one connection to a pulled source failed, in words for ``GET /streams``: what
    happened and where, with no errno numbers and no exception class names.

    ``HTTP 404 Not Found from http://host/path`` (raised as such by the puller),
    ``connection refused by 127.0.0.1:8000``, ``host not found: radio.example``,
    ``no answer from radio.example:80 within 10 s``, ``no audio for 10 s``,
    ``connection reset by radio.example:80``, ``radio.example:80 closed the connection``,
    ``not an audio stream (text/html)``, ``cannot decode the audio (audio/mpeg): invalid data
    found when processing input``; a refusal of the source policy is its one message.

    Args:
        exc: What the connection raised (the exceptions behind it are looked at too).
        url: The URL it was fetching, for an error that does not name its request.
        content_type: The ``Content-Type`` the body handed to FFmpeg came with, if any.
        stall_s: The read timeout, seconds (``sources.stall_s``): a read that timed out is
            ``no audio for <stall_s> s``.
        open_timeout_s: The connect timeout, seconds (``sources.open_timeout_s``).
    """
    chain = exception_chain(exc)
    host, address = _where(chain, url)
    refused = _first(chain, SourceRefused)
    if refused is not None:
        if refused.transient:
            return f"host not found: {refused.host or host}"
        return str(refused)
    stalled = _first(chain, SourceStalled)
    if stalled is not None:
        return str(stalled)
    if _first(chain, socket.gaierror) is not None:
        return f"host not found: {host}"
    cert = _first(chain, ssl.SSLCertVerificationError)
    if cert is not None:
        why = _plain(str(getattr(cert, "verify_message", None) or "")) or _tls_text(cert)
        return f"the TLS certificate of {host} is not accepted: {why}"
    tls = _first(chain, ssl.SSLError)
    if tls is not None:
        return f"TLS with {address} failed: {_tls_text(tls)}"
    if _first(chain, (httpx.ConnectTimeout, httpcore.ConnectTimeout)) is not None:
        within = f" within {open_timeout_s:g} s" if open_timeout_s else " in time"
        return f"no answer from {address}{within}"
    if _first(chain, (httpx.TimeoutException, httpcore.TimeoutException, TimeoutError)) is not None:
        return f"no audio for {stall_s:g} s" if stall_s else f"no data from {address} in time"
    if _first(chain, ConnectionRefusedError) is not None:
        return f"connection refused by {address}"
    if _first(chain, ConnectionResetError) is not None:
        return f"connection reset by {address}"
    closed = _first(chain, (httpx.RemoteProtocolError, httpcore.RemoteProtocolError))
    if closed is not None:
        text = str(closed)
        if "disconnect" in text or "closed" in text or not text:
            return f"{address} closed the connection"
        return f"{address} broke the HTTP protocol: {_plain(text)}"
    mime = _mime(content_type)
    ffmpeg = _first(chain, av.FFmpegError)
    decode = _first(chain, DecodeError)
    if (ffmpeg is not None or decode is not None) and _not_audio(mime):
        return f"not an audio stream ({mime})"
    if ffmpeg is not None:
        detail = _plain(str(ffmpeg.strerror or "")) or "FFmpeg refused it"
        return f"cannot decode the audio{f' ({mime})' if mime else ''}: {detail}"
    connect = _first(chain, (httpx.ConnectError, httpcore.ConnectError))
    os_error = _first(chain, OSError)
    if os_error is not None and os_error.strerror:
        detail = _plain(os_error.strerror)
        if connect is not None:
            return f"cannot connect to {address}: {detail}"
        if host != address:  # a network address, not a file
            return f"the connection to {address} failed: {detail}"
        return f"reading {address} failed: {detail}"
    if connect is not None:
        return f"cannot connect to {address}" + (
            f": {_plain(str(connect))}" if str(connect) else ""
        )
    network = _first(chain, (httpx.TransportError, httpcore.NetworkError))
    if network is not None:
        detail = _plain(str(network))
        return f"the connection to {address} failed" + (f": {detail}" if detail else "")
    if isinstance(exc, GenrecastError) or decode is not None:
        return _plain(str(decode if decode is not None else exc)) or "the source failed"
    text = _plain(str(exc))
    return f"unexpected error: {text}" if text else "unexpected error"


class IcyDemuxer:
    """Splits an ICY (SHOUTcast/Icecast) body into audio bytes and metadata blocks.

    After every ``metaint`` bytes of audio comes one length byte ``n`` and ``16 * n`` bytes of
    metadata (``n == 0``: none this time). Feed the body in chunks of any size.
    """

    def __init__(self, metaint: int) -> None:
        if metaint <= 0:
            raise ValueError(f"metaint must be > 0 bytes, got {metaint!r}")
        self._metaint = metaint
        self._audio_left = metaint
        self._meta_left: int | None = None  # None: expecting the length byte
        self._meta = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, list[bytes]]:
        """Returns the audio bytes in ``data`` and the metadata blocks it completed."""
        audio = bytearray()
        blocks: list[bytes] = []
        view = memoryview(data)
        while view:
            if self._audio_left:
                take = min(self._audio_left, len(view))
                audio += view[:take]
                view = view[take:]
                self._audio_left -= take
            elif self._meta_left is None:
                self._meta_left = view[0] * 16
                view = view[1:]
                if self._meta_left == 0:
                    self._meta_left = None
                    self._audio_left = self._metaint
            else:
                take = min(self._meta_left, len(view))
                self._meta += view[:take]
                view = view[take:]
                self._meta_left -= take
                if self._meta_left == 0:
                    blocks.append(bytes(self._meta))
                    self._meta.clear()
                    self._meta_left = None
                    self._audio_left = self._metaint
        return bytes(audio), blocks


# -- I/O shell ----------------------------------------------------------------------------------


class HttpBody:
    """A streaming HTTP body as a file for PyAV (``read``), ICY metadata taken out.

    ``check`` runs before every network read and may raise to abandon the connection (stopped,
    stalled); ``on_title`` gets each ``StreamTitle`` found; ``on_close`` runs once, on
    :meth:`close`.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        *,
        metaint: int | None,
        on_title: Callable[[str], None],
        check: Callable[[], None],
        name: str = "",
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self._chunks = chunks
        self._icy = IcyDemuxer(metaint) if metaint else None
        self._on_title = on_title
        self._check = check
        self._on_close = on_close
        self._buf = bytearray()
        self.name = name

    def close(self) -> None:
        """Release the connection under it (PyAV calls this when FFmpeg is done with it)."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def read(self, size: int = -1) -> bytes:
        while not self._buf:
            self._check()
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            if self._icy is None:
                self._buf += chunk
                continue
            audio, blocks = self._icy.feed(chunk)
            self._buf += audio
            for block in blocks:
                title = parse_stream_title(block)
                if title is not None:
                    self._on_title(title)
        n = len(self._buf) if size is None or size < 0 else size
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


@dataclass
class _Opened:
    """One connection's input for :func:`iter_pcm`."""

    source: str | Readable
    format: str | None
    options: dict[str, str]
    finite: bool
    probe_duration: bool  # decide ``finite`` from the container's duration once open
    io_open: HlsInput | None = None  # every further file FFmpeg opens, through the puller


@dataclass(frozen=True)
class _Outcome:
    audio_s: float  # seconds of audio this connection delivered
    finished: bool
    reason: str
    refused: bool = False  # the source policy refused it: fail at once


class HlsInput:
    """FFmpeg's ``io_open`` for an HLS stream: every playlist, segment and key its HLS demuxer
    asks for is fetched here, through the puller's checked client (:func:`fetch`: every address
    and every redirect checked), and handed back as a file.

    The playlists the puller has already read and checked (the first, and a master playlist's
    variants) are served from memory, once each.
    Encrypted segments (``crypto+http``) are not supported; a segment answered with an HTTP
    error is served empty, so FFmpeg skips it as it would its own failed request. A reloaded
    playlist is refused past :data:`~stream_server.sources.web_fetch.MAX_PLAYLIST_BYTES`, as the
    first one is. After a
    refusal every further request is refused too (FFmpeg would go on to the next segment); the
    refusal ends the decoding.
    """

    def __init__(
        self,
        client: httpx.Client,
        policy: SourcePolicy,
        reader: Callable[[Iterator[bytes], Mapping[str, str], str, Callable[[], object]], Readable],
        on_socket: Callable[[socket.socket | None], None],
        read: Mapping[str, bytes],
    ) -> None:
        self._client = client
        self._policy = policy
        self._reader = reader
        self._on_socket = on_socket
        self._read = dict(read)
        self._open: set[contextlib.ExitStack] = set()
        self._refused: SourceRefused | None = None

    def __call__(self, url: str, flags: int, options: Mapping[str, str]) -> Readable:
        if flags & _AVIO_FLAG_WRITE:
            raise DecodeError(f"FFmpeg asked to write {url!r}")
        data = self._read.pop(url, None)
        if data is not None:
            return io.BytesIO(data)
        if self._refused is not None:  # FFmpeg goes on to the next segment: refuse it too
            raise self._refused
        if url.lower().startswith("crypto"):
            raise DecodeError("encrypted HLS segments (AES-128) are not supported")
        stack = contextlib.ExitStack()
        try:
            self._policy.check_url(url)
            response = stack.enter_context(fetch(self._client, url, self._policy))
        except SourceRefused as exc:
            stack.close()
            self._refused = exc
            raise
        except BaseException:
            stack.close()
            raise
        if response.status_code >= 400:
            log.info("HLS: HTTP %d for %s; skipped", response.status_code, url)
            stack.close()
            return io.BytesIO(b"")
        self._open.add(stack)
        self._on_socket(socket_of(response))

        def release() -> None:
            self._open.discard(stack)
            stack.close()

        chunks = response.iter_bytes()
        if format_hint(response.headers.get("content-type"), url) == "hls":
            chunks = playlist_chunks(chunks)  # a reloaded playlist: bounded like the first
        return self._reader(chunks, response.headers, url, release)

    def close(self) -> None:
        """Close every response FFmpeg has not closed."""
        while self._open:
            self._open.pop().close()


class Puller:
    """Pulls one source into one live stream from a worker thread; see the module docstring.

    Every change to the stream (state, counters, audio, titles, gaps, its end) is posted to the
    event loop as a call on its :class:`~stream_server.types.StreamSink`, each failed
    connection's reason (:func:`describe_failure`) included; the worker never touches it
    directly. ``went_live``: the source
    has delivered audio before (a stream taken over from another node): it is retried as a
    live source from its first failure.
    """

    def __init__(
        self,
        sink: StreamSink,
        source: str,
        config: SourcesConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        went_live: bool = False,
    ) -> None:
        self._sink = sink
        self._went_live = went_live  # some connection delivered audio
        self.source = source
        self._config = config
        self._loop = loop
        self._policy = ReconnectPolicy.from_config(config)
        self._sources = SourcePolicy.from_config(config)
        self._rate = sink.sample_rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending = 0
        self._max_pending = max(4, math.ceil(MAX_PENDING_S / config.chunk_s))
        self._socket: socket.socket | None = None
        self._state: StreamState = "connecting"
        self._last_audio: float | None = None  # time.monotonic() of the last chunk delivered
        self._connection_start = time.monotonic()
        self._delivered_now = False  # this connection has delivered audio
        self._content_type: str | None = None  # of the body this connection handed to FFmpeg
        self._thread = threading.Thread(
            target=self._run, name=f"genrecast-pull-{sink.stream_id}", daemon=True
        )

    # -- control (event loop) ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the worker to stop; a blocked network read is woken by shutting the socket."""
        self._stop.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds for the worker thread to finish."""
        self._thread.join(timeout_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # -- posting to the event loop (worker thread) ------------------------------------------

    def _post(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server is gone
            self._stop.set()

    def _event(self, event: StreamEvent) -> None:
        new = transition(self._state, event)
        if new != self._state:
            self._state = new
            self._post(self._sink.set_state, new)

    def _count(self, counter: SourceCounter, n: int = 1) -> None:
        if n:
            self._post(self._sink.count, counter, n)

    def _deliver(self, block: np.ndarray) -> None:
        """Hand one mono float32 block to the stream, or drop it if the loop is behind."""
        with self._lock:
            if self._pending >= self._max_pending:
                drop = True
            else:
                drop = False
                self._pending += 1
        if drop:
            self._count("dropped")
            return
        self._post(self._feed, np.ascontiguousarray(block.reshape(-1), dtype=np.float32))

    def _feed(self, samples: FloatArray) -> None:
        with self._lock:
            self._pending -= 1
        self._sink.feed_samples(samples)

    def _title(self, title: str) -> None:
        self._post(self._sink.title, title)

    def _finish(self, event: StreamEvent, reason: str) -> None:
        self._state = transition(self._state, event)
        final = self._state

        async def end() -> None:
            self._sink.set_state(final)
            await self._sink.end(reason)

        try:
            future = asyncio.run_coroutine_threadsafe(end(), self._loop)
        except RuntimeError:
            return
        future.add_done_callback(_log_failure)

    # -- the worker -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._connections()
        except Exception as exc:  # never leave a stream hanging on an unexpected error
            log.exception("pulling %s failed", self.source)
            if not self._stop.is_set():
                reason = describe_failure(exc, url=self.source)
                self._failed(reason)
                self._finish("gave_up", f"source failed: {reason}")

    def _failed(self, reason: str) -> None:
        """One connection failed: its reason goes to the stream (``last_error``)."""
        self._post(self._sink.connection_failed, reason, time.time())

    def _connections(self) -> None:
        failures = 0
        while not self._stop.is_set():
            outcome = self._connect_once()
            if self._stop.is_set():
                return
            if outcome.finished:
                self._finish("finished", "end of source")
                return
            self._failed(outcome.reason)
            if outcome.refused:
                self._finish("gave_up", outcome.reason)
                return
            # A connection that stayed long enough starts the count again; one that delivered a
            # moment of audio and dropped is one more failure in a row.
            failures = 1 if outcome.audio_s >= RECOVERED_S else failures + 1
            delay = self._policy.delay(failures, went_live=self._went_live)
            if delay is None:
                if failures == 1:  # a source that never delivered audio: the reason itself
                    reason = outcome.reason
                else:
                    reason = f"source failed {failures} times in a row; last: {outcome.reason}"
                log.info("pulling %s failed: %s", self.source, reason)
                self._finish("gave_up", reason)
                return
            log.info(
                "source %s lost (%s); reconnecting in %.1f s", self.source, outcome.reason, delay
            )
            self._event("lost")
            if self._stop.wait(delay):
                return
            self._count("reconnects")

    def _check(self) -> None:
        """Raise to abandon the connection: stopped, or no audio for ``stall_s`` seconds."""
        if self._stop.is_set():
            raise _Stopped("stopped")
        since = self._connection_start
        if self._delivered_now and self._last_audio is not None:
            since = self._last_audio
        if time.monotonic() - since > self._config.stall_s:
            raise SourceStalled(f"no audio for {self._config.stall_s:g} s")

    def _connect_once(self) -> _Outcome:
        cfg = self._config
        stats = DecodeStats()
        reported = 0
        self._delivered_now = False
        self._content_type = None
        self._connection_start = time.monotonic()
        paced_t0 = 0.0
        sent = 0
        try:
            with self._open() as opened:

                def on_open(container: InputContainer) -> None:
                    if opened.probe_duration and container.duration and container.duration > 0:
                        opened.finite = True
                    meta = container.metadata
                    title = meta.get("StreamTitle") or meta.get("icy-title") or meta.get("title")
                    if title:
                        self._title(str(title))

                blocks = iter_pcm(
                    opened.source,
                    sample_rate=self._rate,
                    channels=1,
                    chunk_seconds=cfg.chunk_s,
                    open_timeout_s=cfg.open_timeout_s,
                    read_timeout_s=cfg.stall_s,
                    stats=stats,
                    format=opened.format,
                    options=opened.options,
                    on_open=on_open,
                    io_open=opened.io_open,
                )
                with contextlib.closing(blocks):
                    for block in blocks:
                        if self._stop.is_set():
                            break
                        now = time.monotonic()
                        if not self._delivered_now:
                            self._live_again(now)
                            paced_t0 = now
                        self._delivered_now = True
                        self._last_audio = now
                        self._deliver(block)
                        sent += block.shape[0]
                        self._count("corrupt_packets", stats.corrupt_packets - reported)
                        reported = stats.corrupt_packets
                        # a finite source plays at real time; a live one may be ahead by a
                        # burst, no more (a playlist listing hours of segments is not a
                        # reason to decode hours of audio at once)
                        burst = 0.0 if opened.finite else MAX_BURST_S
                        ahead = sent / self._rate - (time.monotonic() - paced_t0) - burst
                        if ahead > 0 and self._stop.wait(ahead):
                            break
                finished = opened.finite and not self._stop.is_set()
                return _Outcome(sent / self._rate, finished, "end of stream")
        except _Stopped:
            return _Outcome(sent / self._rate, False, "stopped")
        except SourceRefused as exc:
            log.warning("refused to pull %r: %s", self.source, exc.detail)
            reason = self._reason(exc)
            # a name that did not resolve: a failed connection like any other
            return _Outcome(sent / self._rate, False, reason, refused=not exc.transient)
        except Exception as exc:  # any failure of one connection: reconnect per the policy
            if self._stop.is_set():
                return _Outcome(sent / self._rate, False, "stopped")
            log.info("pulling %s: %r", self.source, exc)
            return _Outcome(sent / self._rate, False, self._reason(exc))
        finally:
            self._count("corrupt_packets", stats.corrupt_packets - reported)
            self._socket = None

    def _reason(self, exc: BaseException) -> str:
        cfg = self._config
        return describe_failure(
            exc,
            url=self.source,
            content_type=self._content_type,
            stall_s=cfg.stall_s,
            open_timeout_s=cfg.open_timeout_s,
        )

    def _live_again(self, now: float) -> None:
        """First audio of a connection: mark the gap since the last audio, if any."""
        self._went_live = True
        if self._last_audio is not None:
            self._post(self._sink.gap, max(0.0, now - self._last_audio))
        self._event("audio")

    @contextlib.contextmanager
    def _open(self) -> Iterator[_Opened]:
        """Check the source again (the policy, DNS, the file on disk) and open it."""
        checked = self._sources.check_source(self.source)
        if isinstance(checked, MediaFile):
            with open_media(checked) as file:
                options = {"protocol_whitelist": NO_PROTOCOLS}
                yield _Opened(file, None, options, finite=True, probe_duration=False)
            return
        with self._open_http(checked) as opened:
            yield opened

    @contextlib.contextmanager
    def _open_http(self, web: WebUrl) -> Iterator[_Opened]:
        cfg = self._config
        timeout = httpx.Timeout(cfg.stall_s, connect=cfg.open_timeout_s)
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(checked_client(self._sources, timeout))
            try:
                response = stack.enter_context(fetch(client, web.url, self._sources))
            except NotHttp as exc:
                # An old SHOUTcast server answers "ICY 200 OK", which is not HTTP.
                icy = stack.enter_context(icy_get(self._sources, exc.url, timeout))
                self._socket = icy.socket
                yield self._opened(icy.chunks, icy.headers, exc.url)
                return
            if response.status_code >= 400:
                raise DecodeError(_http_error(response))
            if format_hint(response.headers.get("content-type"), str(response.url)) == "hls":
                playlist_url = str(response.url)
                playlist = read_playlist(response)
                response.close()
                text = playlist.decode("utf-8", "replace")
                read = {playlist_url: playlist, **self._check_playlist(client, playlist_url, text)}
                hls = HlsInput(client, self._sources, self._reader, self._set_socket, read)
                stack.callback(hls.close)
                options = dict(HLS_OPTIONS)
                yield _Opened(playlist_url, "hls", options, False, True, io_open=hls)
                return
            self._socket = socket_of(response)
            yield self._opened(response.iter_bytes(), response.headers, web.url)

    def _reader(
        self,
        chunks: Iterator[bytes],
        headers: Mapping[str, str],
        url: str,
        on_close: Callable[[], object] | None = None,
    ) -> HttpBody:
        """A body read here, ICY metadata taken out, as a file for FFmpeg."""
        metaint = _int_header(headers.get("icy-metaint"))
        return HttpBody(
            chunks,
            metaint=metaint,
            on_title=self._title,
            check=self._check,
            name=url,
            on_close=on_close,
        )

    def _opened(self, chunks: Iterator[bytes], headers: Mapping[str, str], url: str) -> _Opened:
        """FFmpeg's input for one body: finite when it has a length and no ICY metadata."""
        if self._stop.is_set():
            raise _Stopped("stopped")
        self._content_type = headers.get("content-type")
        reader = self._reader(chunks, headers, url)
        finite = "icy-metaint" not in headers and "content-length" in headers
        hint = format_hint(headers.get("content-type"), url)
        options = {"protocol_whitelist": NO_PROTOCOLS}
        return _Opened(reader, hint, options, finite=finite, probe_duration=False)

    def _set_socket(self, sock: socket.socket | None) -> None:
        self._socket = sock

    def _check_playlist(self, client: httpx.Client, url: str, text: str) -> dict[str, bytes]:
        """Check the host of every URI an HLS playlist names; a master playlist's own playlists
        are fetched (checked, as every fetch) and their URIs checked too. Returns the playlists
        read, by the URL they came from (after redirects), for FFmpeg to get from memory.

        Raises:
            SourceRefused: a URI is not an allowed http(s) URL, or there are too many playlists.
        """
        playlists, others = playlist_uris(text, url)
        if len(playlists) > MAX_VARIANT_PLAYLISTS:
            raise SourceRefused(f"{url!r} lists more than {MAX_VARIANT_PLAYLISTS} playlists")
        read: dict[str, bytes] = {}
        for variant in dict.fromkeys(playlists):
            self._sources.check_url(variant)
            with fetch(client, variant, self._sources) as response:
                if response.status_code >= 400:
                    raise DecodeError(_http_error(response))
                data = read_playlist(response)
            sub_text = data.decode("utf-8", "replace")
            if is_master_playlist(sub_text):
                raise SourceRefused(f"{variant!r}: a master playlist inside a master playlist")
            others += playlist_uris(sub_text, str(response.url))[1]
            read[str(response.url)] = data
        hosts = {(w.host, w.port) for w in map(self._sources.check_url, others)}
        for host, port in sorted(hosts):
            self._sources.check_address(host, port)
        return read


def _int_header(value: str | None) -> int | None:
    try:
        n = int(value) if value is not None else 0
    except ValueError:
        return None
    return n if n > 0 else None


def _http_error(response: httpx.Response) -> str:
    """``HTTP 404 Not Found from http://host/path``: an error status and where it came from
    (after redirects; user, password and query left out: they may hold a secret)."""
    u = response.url
    host = f"[{u.host}]" if ":" in u.host else u.host
    port = f":{u.port}" if u.port is not None else ""
    url = f"{u.scheme}://{host}{port}{u.path}"
    reason = response.reason_phrase or ""
    return f"HTTP {response.status_code}{f' {reason}' if reason else ''} from {url}"


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("ending a pulled stream failed: %s", future.exception())
