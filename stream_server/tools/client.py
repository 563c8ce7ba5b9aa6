"""WebSocket clients: push an audio source as PCM to ``/ws/ingest``, watch ``/ws/updates``.

Both are plain asyncio functions over the ``websockets`` client, used by the command line and by
tests. PCM is sent uncompressed (``compression=None``): deflate only burns CPU on audio.

Every function that talks to a server takes ``token``: it goes as ``Authorization: Bearer`` on
HTTP requests and WebSocket handshakes (:func:`auth_headers`; ``None``: ``$GENRECAST_TOKEN``, if
set). A server that wants a token (401) or more scopes (403) is a :class:`ClientError` saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TextIO
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from stream_server.core.summary import StreamSummary, summarize
from stream_server.core.timeline import Segment, segments_from_json
from stream_server.errors import AccessRefused, ClientError, PullFailed, exception_chain
from stream_server.media.decode import iter_pcm, probe
from stream_server.messages import (
    NON_MUSIC_LABELS,
    ClassifyResult,
    ServerMessage,
    StartMessage,
    StreamEnded,
    dumps,
    parse_server_message,
)
from stream_server.serve.auth import ADMIN, INGEST, READ, TOKEN_ENV, Scope

#: Seconds of audio per PCM frame sent by :func:`push`.
FRAME_SECONDS = 0.1
#: Longest wait, in seconds, for the server to compute the next window when pushing ``fast``.
PACE_TIMEOUT_S = 120.0
#: Seconds ``genrecast watch`` keeps trying a server it has never reached before it gives up.
WATCH_CONNECT_S = 10.0

# -- errors in words ---------------------------------------------------------------------------
#
# Every failure a client reports goes through :func:`close_words` (a WebSocket closed by the
# server) or :func:`error_words` (a connection that failed): the user reads what happened, never
# an errno or a close code.

#: What a WebSocket close code (RFC 6455 section 7.4.1) means, for a close without a reason.
CLOSE_WORDS: Final[Mapping[int, str]] = {
    1000: "the server closed the connection",
    1001: "the server is going away (shutting down)",
    1002: "the server found a protocol error in what was sent",
    1003: "the server does not accept the data sent",
    1005: "the server closed the connection without saying why",
    1006: "the connection dropped (the server stopped, or the network failed)",
    1007: "the server found invalid data in a message",
    1008: "the server refused the connection (its policy, or the token)",
    1009: "a message was too large for the server",
    1010: "the server lacks an extension the client needs",
    1011: "the server hit an internal error (its log says why)",
    1012: "the server is restarting",
    1013: "the server is overloaded; try again later",
    1014: "a gateway in front of the server failed",
    1015: "the TLS handshake failed",
}

#: What an OS error number means on a client's connection.
ERRNO_WORDS: Final[Mapping[int, str]] = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by the server",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection broken",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.EHOSTDOWN: "host down",
    errno.ENETUNREACH: "network unreachable",
    errno.ENETDOWN: "network down",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EACCES: "permission denied",
}

_ERRNO_IN_TEXT = re.compile(r"\[Errno (-?\d+)\]")


def close_words(code: int | None, reason: str = "") -> str:
    """Why a WebSocket was closed, in words: the server's own ``reason`` when it gave one (it is
    written for people), else what ``code`` means (``None``: no close frame came)."""
    if reason.strip():
        return reason.strip()
    if code is None:
        return CLOSE_WORDS[1006]
    return CLOSE_WORDS.get(code, "the server closed the connection without saying why")


def _errno_words(number: int) -> str | None:
    if number < 0:  # getaddrinfo's EAI_* codes: the name did not resolve
        return "host not found"
    return ERRNO_WORDS.get(number)


def error_words(exc: BaseException) -> str:
    """What went wrong with a connection, in a few words (``connection refused``,
    ``host not found``, ``timed out``, ``the server is restarting``): no errno, no close code.

    Looks through ``exc`` and the errors behind it (httpx wraps the socket's).
    """
    dropped = False  # a connection closed without a close frame: its cause may say more
    for error in exception_chain(exc):
        if isinstance(error, ConnectionClosed):
            if error.rcvd is not None:
                return close_words(error.rcvd.code, error.rcvd.reason)
            dropped = True
            continue
        if isinstance(error, socket.gaierror):
            return "host not found"
        if isinstance(error, (TimeoutError, httpx.TimeoutException)):
            return "timed out"
        if isinstance(error, OSError) and error.errno is not None:
            words = _errno_words(error.errno)
            if words:
                return words
    for error in exception_chain(exc):  # "Multiple exceptions: [Errno 111] ...", or httpx's text
        match = _ERRNO_IN_TEXT.search(str(error))
        if match and (words := _errno_words(int(match.group(1)))):
            return words
    if dropped:
        return close_words(None)
    if isinstance(exc, InvalidHandshake):
        return "it does not answer as a genrecast server does (no WebSocket)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    text = _ERRNO_IN_TEXT.sub("", str(exc)).strip()
    return text or type(exc).__name__


def unreachable(base: str, exc: BaseException) -> ClientError:
    """The error for a server at ``base`` that could not be reached because of ``exc``."""
    return ClientError(f"cannot reach the server at {base}: {error_words(exc)}")


def no_server(base: str, words: str) -> ClientError:
    """The error for a server at ``base`` that never answered (``words``: why the last attempt
    failed, :func:`error_words`)."""
    return ClientError(
        f"no genrecast server answers at {base} ({words}); is it running? "
        "start one with `genrecast serve`"
    )


def resolve_token(token: str | None = None) -> str | None:
    """``token``, else ``$GENRECAST_TOKEN``, without surrounding blanks; ``None`` when empty."""
    value = (os.environ.get(TOKEN_ENV, "") if token is None else token).strip()
    return value or None


def auth_headers(token: str | None = None) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` for ``token`` (``None``: ``$GENRECAST_TOKEN``);
    empty without a token."""
    resolved = resolve_token(token)
    return {"Authorization": f"Bearer {resolved}"} if resolved else {}


def refusal(status: int, body: object, scope: Scope, sent_token: bool) -> str | None:
    """What a 401 or a 403 for want of ``scope`` means to the user; ``None`` for any other
    answer. ``body``: the answer's bytes or its decoded JSON (``{"error", "code"}``);
    ``sent_token``: whether the request carried one."""
    if isinstance(body, (bytes, bytearray)):
        body = _json_body(body)
    code = body.get("code") if isinstance(body, dict) else None
    if status == 401:
        if sent_token:
            return f"the server does not accept this token: check --token or {TOKEN_ENV}"
        return f"the server needs a token: pass --token or set {TOKEN_ENV}"
    if status == 403 and code == "forbidden":
        return f"the token lacks the {scope!r} scope"
    return None


def _json_body(data: bytes | bytearray) -> object:
    """``data`` as JSON; ``None`` when it is not."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None


@contextlib.asynccontextmanager
async def open_ws(
    url: str, *, token: str | None = None, scope: Scope = READ
) -> AsyncIterator[ClientConnection]:
    """A WebSocket to ``url`` (uncompressed, no proxy) carrying the token of
    :func:`auth_headers`; a refused handshake is a :class:`ClientError` (``scope``: what the
    path needs, for the message).

    Raises:
        ClientError: the server answered the handshake with an HTTP status instead of 101.
    """
    headers = auth_headers(token)
    try:
        ws = await connect(url, compression=None, proxy=None, additional_headers=headers)
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = _json_body(exc.response.body or b"")
        reason = refusal(status, body, scope, bool(headers))
        if reason is not None:
            raise AccessRefused(status, reason) from None
        error = body.get("error") if isinstance(body, dict) else None
        path = url.split("://", 1)[-1].split("?", 1)[0]
        raise ClientError(
            f"the server refused {path} ({status}): {error or exc.response.reason_phrase}"
        ) from None
    async with ws:
        yield ws


@contextlib.asynccontextmanager
async def _connected(
    server: str, url: str, *, token: str | None, scope: Scope
) -> AsyncIterator[ClientConnection]:
    """:func:`open_ws`, with a connection that cannot be made said in words
    (:func:`unreachable`)."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            ws = await stack.enter_async_context(open_ws(url, token=token, scope=scope))
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            if isinstance(exc, InvalidStatus):  # refusals are ClientErrors already
                raise
            raise unreachable(http_base(server), exc) from None
        yield ws


def _check_access(response: httpx.Response, scope: Scope, sent_token: bool) -> None:
    """Raise :class:`AccessRefused` for a 401, or a 403 for want of ``scope``."""
    reason = refusal(response.status_code, response.content, scope, sent_token)
    if reason is not None:
        raise AccessRefused(response.status_code, reason)


def http_base(server: str) -> str:
    """The HTTP base URL of ``server``, given as ``http(s)://`` or ``ws(s)://`` host:port."""
    if server.startswith("http"):
        return server.rstrip("/")
    scheme = "https" if server.startswith("wss://") else "http"
    return f"{scheme}://" + server.split("://")[-1].rstrip("/")


def ws_url(server: str, path: str, **query: object) -> str:
    """``http://host:port`` or ``ws://host:port`` plus ``path`` and non-None query values."""
    base = server.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[4:]
    elif not base.startswith("ws"):
        base = "ws://" + base
    params = {k: v for k, v in query.items() if v is not None}
    return f"{base}{path}" + (f"?{urlencode(params)}" if params else "")


async def _expect(ws: ClientConnection, wanted: str, wait_s: float) -> ServerMessage:
    while True:
        raw = await asyncio.wait_for(ws.recv(), wait_s)
        message = parse_server_message(raw)
        if message["type"] == "error":
            raise ClientError(f"server error ({message['code']}): {message['message']}")
        if message["type"] == wanted:
            return message


@dataclass
class PushResult:
    stream_id: str
    seconds_sent: float
    ended: StreamEnded | None


ProgressFn = Callable[[float, float | None], None]


Pace = Literal["realtime", "fast", "flood"]


class _ComputedUntil:
    """Follows a stream's ``genre.update`` messages: how far into the stream windows are done."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.changed = asyncio.Event()

    async def follow(self, server: str, stream_id: str, since: int, token: str | None) -> None:
        url = ws_url(server, "/ws/updates", stream_id=stream_id, since=since)
        try:
            async with open_ws(url, token=token, scope=READ) as ws:
                async for raw in ws:
                    message = parse_server_message(raw)
                    if message["type"] == "genre.update":
                        self.seconds = max(self.seconds, message["stream_time_s"])
                        self.changed.set()
        except AccessRefused as exc:
            if exc.status != 403:
                raise
            raise AccessRefused(
                exc.status,
                f"{exc}, which the default pacing needs to follow the windows: pass --realtime "
                "or --flood, or use a token with the 'read' scope",
            ) from None

    async def wait_beyond(self, seconds: float) -> None:
        while self.seconds < seconds:
            self.changed.clear()
            await self.changed.wait()


async def _window_and_hop(server: str, token: str | None) -> tuple[float, float]:
    base = http_base(server)
    try:
        async with httpx.AsyncClient(
            base_url=base, trust_env=False, headers=auth_headers(token)
        ) as http:
            ready = (await http.get("/ready")).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise unreachable(base, exc) from None
    if not ready.get("ready"):
        raise ClientError(f"the server is not ready: {ready.get('error') or 'model loading'}")
    return float(ready["window_s"]), float(ready["hop_s"])


async def push_frames(
    frames: Iterator[np.ndarray],
    *,
    server: str,
    sample_rate: int,
    channels: int,
    name: str = "",
    pace: Pace = "fast",
    speed: float = 1.0,
    on_started: Callable[[str], None] | None = None,
    progress: ProgressFn | None = None,
    duration_s: float | None = None,
    end_timeout: float = 30.0,
    token: str | None = None,
) -> PushResult:
    """Send ``frames`` (``(frames, channels)`` float32 arrays) as f32le PCM; returns when ended.

    ``pace``: ``realtime`` sends at ``speed`` times the audio's own speed; ``fast`` sends as
    fast as the server computes windows, staying less than one hop ahead of the last computed
    window so none is skipped; ``flood`` sends as fast as the connection allows (the server
    then keeps only the newest due window of the stream and counts the others as skipped).
    ``token`` needs the ``ingest`` scope, and ``read`` too for ``fast`` (see :func:`auth_headers`).
    """
    start = StartMessage(type="start", sample_rate=sample_rate, channels=channels, format="f32le")
    if name:
        start["name"] = name
    window_s, hop_s = await _window_and_hop(server, token) if pace == "fast" else (0.0, 0.0)
    computed = _ComputedUntil()
    async with _connected(server, ws_url(server, "/ws/ingest"), token=token, scope=INGEST) as ws:
        await ws.send(dumps(start))
        started = await _expect(ws, "stream.started", 30.0)
        assert started["type"] == "stream.started"
        stream_id = started["stream_id"]
        follower = None
        if pace == "fast":
            follower = asyncio.create_task(
                computed.follow(server, stream_id, started["seq"], token)
            )
        if on_started is not None:
            on_started(stream_id)
        sent = 0
        t0 = time.monotonic()
        try:
            for block in frames:
                if follower is not None:
                    # Next due window ends at computed + hop (or at window_s for the first).
                    limit = (computed.seconds or window_s - hop_s) + 1.5 * hop_s
                    if (sent + len(block)) / sample_rate > limit:
                        await _wait_or_fail(computed.wait_beyond(limit - hop_s), follower)
                await ws.send(np.ascontiguousarray(block, dtype="<f4").tobytes())
                sent += len(block)
                if progress is not None:
                    progress(sent / sample_rate, duration_s)
                if pace == "realtime":
                    ahead = sent / sample_rate / speed - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await ws.send(dumps({"type": "stop"}))
            ended = await _expect(ws, "stream.ended", end_timeout)
        except ConnectionClosed as exc:
            stopped = await _ended_before_close(ws)
            if stopped is None:
                raise ClientError(f"the server closed the stream: {error_words(exc)}") from None
            ended = stopped  # ended elsewhere (DELETE /streams/{id}, server stopping)
        finally:
            if follower is not None:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
        assert ended["type"] == "stream.ended"
        return PushResult(stream_id, sent / sample_rate, ended)


async def _ended_before_close(ws: ClientConnection) -> StreamEnded | None:
    """The ``stream.ended`` the server sent before it closed the connection, if any."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            message = parse_server_message(await asyncio.wait_for(ws.recv(), 1.0))
            if message["type"] == "stream.ended":
                return message
    return None


async def _wait_or_fail(waiting: Coroutine[Any, Any, None], follower: asyncio.Task[None]) -> None:
    """Wait for ``waiting`` unless the update follower dies first (then raise its error)."""
    wait_task = asyncio.ensure_future(waiting)
    await asyncio.wait(
        {wait_task, follower}, timeout=PACE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
    )
    if wait_task.done():
        return
    wait_task.cancel()
    if not follower.done():
        raise ClientError(f"no window was computed for {PACE_TIMEOUT_S:.0f} s")
    exc = follower.exception() if not follower.cancelled() else None
    if isinstance(exc, ClientError):
        raise exc
    words = error_words(exc) if exc is not None else "it stopped"
    raise ClientError(f"lost the updates connection while pacing: {words}")


async def push(
    source: str,
    *,
    server: str,
    name: str = "",
    pace: Pace = "fast",
    on_started: Callable[[str], None] | None = None,
    progress: ProgressFn | None = None,
    token: str | None = None,
) -> PushResult:
    """Decode ``source`` with PyAV and push it (see :func:`push_frames`)."""
    info = probe(source)
    channels = min(info.channels, 2)
    frames = iter_pcm(
        source, sample_rate=info.sample_rate, channels=channels, chunk_seconds=FRAME_SECONDS
    )
    return await push_frames(
        frames,
        server=server,
        sample_rate=info.sample_rate,
        channels=channels,
        name=name or source.rsplit("/", 1)[-1],
        pace=pace,
        on_started=on_started,
        progress=progress,
        duration_s=info.duration_s,
        token=token,
    )


def classify_remote(
    path: str, *, server: str, timeout_s: float = 600.0, token: str | None = None
) -> ClassifyResult:
    """Upload the file at ``path`` to the server's ``POST /classify``; its answer.
    ``timeout_s``: seconds the upload and its answer may take; ``token``: one with the
    ``ingest`` scope (see :func:`auth_headers`).

    Raises:
        ClientError: the file cannot be read, the server cannot be reached, wants a token or
            refused the file (the message carries its status and its ``error`` text).
    """
    headers = auth_headers(token)
    base = http_base(server)
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    try:
        file = open(path, "rb")  # noqa: SIM115 -- closed below, after the upload
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        with httpx.Client(base_url=base, trust_env=False, timeout=timeout_s) as http:
            response = http.post(
                "/classify",
                files={"file": (name, file, "application/octet-stream")},
                headers=headers,
            )
    except httpx.HTTPError as exc:
        raise unreachable(base, exc) from None
    finally:
        file.close()
    _check_access(response, INGEST, bool(headers))
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        reason = body.get("error") if isinstance(body, dict) else None
        raise ClientError(
            f"the server refused {name} ({response.status_code}): "
            f"{reason or response.reason_phrase or 'no reason given'}"
        )
    result: ClassifyResult = body  # type: ignore[assignment]
    return result


def wants_pull(source: str) -> bool:
    """Whether ``genrecast push SOURCE`` asks the server to pull it (an ``http(s)://`` URL)."""
    return source.lower().startswith(("http://", "https://"))


def _pull_hint(source: str) -> str:
    """Why a server may have refused ``source`` when the source alone tells (the server's own
    answer is one message whatever the reason)."""
    if not wants_pull(source):
        return "; a file must be inside the server's media folder ([sources] media_dir)"
    host = (urlsplit(source).hostname or "").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        private = host == "localhost" or host.endswith(".localhost")
    else:
        private = address.is_loopback or address.is_private or address.is_link_local
    if private:
        return (
            f"; {host} is a loopback or private address, which a server pulls only with "
            "[sources] allow_private_addresses = true (or the host in allowed_hosts)"
        )
    return ""


async def pull(
    source: str, *, server: str, name: str = "", token: str | None = None
) -> dict[str, Any]:
    """Ask the server to pull ``source`` itself (``POST /streams``); returns the new stream.

    ``source`` is an http(s) URL or a file in the server's media folder; ``token`` one with the
    ``admin`` scope (see :func:`auth_headers`).

    Raises:
        PullFailed: the server refused the source (its reason, and a hint when the source
            itself says why).
        ClientError: the server cannot be reached or wants a token.
    """
    headers = auth_headers(token)
    body: dict[str, str] = {"url": source}
    if name:
        body["name"] = name
    base = http_base(server)
    try:
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=30.0) as http:
            response = await http.post("/streams", json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise unreachable(base, exc) from None
    _check_access(response, ADMIN, bool(headers))
    try:
        reply: dict[str, Any] = response.json()
    except ValueError:
        reply = {"error": response.text}
    if response.status_code != 201:
        error = reply.get("error", reply) if isinstance(reply, dict) else reply
        hint = _pull_hint(source) if response.status_code == 403 else ""
        raise PullFailed(f"the server refused to pull {source!r}: {error}{hint}")
    return reply


def stream_failure(stream: Mapping[str, Any]) -> str:
    """Why a stream of ``GET /streams`` ended or is not live, in the server's words: its
    ``reason``, and its ``last_error`` when that says more; empty when it gives neither."""
    reason = str(stream.get("reason") or "").strip()
    last = str(stream.get("last_error") or "").strip()
    if last and last not in reason:
        return f"{reason} (last error: {last})" if reason else last
    return reason


@dataclass(frozen=True)
class PullOutcome:
    """Where a pulled stream stood when :func:`wait_live` stopped waiting.

    ``live``: it went live (``state`` ``live``), or played to its end before it was seen live;
    ``state``: its last state in ``GET /streams`` (empty: not listed yet); ``reason``: the
    server's words for an end or for what it is retrying (:func:`stream_failure`).
    """

    live: bool
    state: str
    reason: str


async def _get_json(http: httpx.AsyncClient, path: str, base: str, sent_token: bool) -> Any:
    """``GET path`` as JSON; a refusal or an unreachable server is a :class:`ClientError`."""
    try:
        response = await http.get(path)
    except httpx.HTTPError as exc:
        raise unreachable(base, exc) from None
    _check_access(response, READ, sent_token)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or body is None:
        error = body.get("error") if isinstance(body, dict) else None
        raise ClientError(
            f"GET {path} failed ({response.status_code}): {error or response.reason_phrase}"
        )
    return body


async def wait_live(
    server: str,
    stream_id: str,
    *,
    token: str | None = None,
    wait_s: float = 30.0,
    poll_s: float = 0.5,
    on_state: Callable[[str, str], None] | None = None,
) -> PullOutcome:
    """Follow a pulled stream in ``GET /streams`` until it goes live, ends or fails, or
    ``wait_s`` seconds pass (then ``live`` is false and ``state`` its state at that moment).
    ``on_state(state, reason)`` hears of each new state on the way (``reconnecting``, with the
    last error).

    Raises:
        ClientError: the server cannot be reached, or the token lacks the ``read`` scope.
    """
    base = http_base(server)
    headers = auth_headers(token)
    deadline = time.monotonic() + wait_s
    seen = ""
    async with httpx.AsyncClient(
        base_url=base, trust_env=False, timeout=10.0, headers=headers
    ) as http:
        while True:
            body = await _get_json(http, "/streams", base, bool(headers))
            streams = body.get("streams", []) if isinstance(body, dict) else []
            stream = next((s for s in streams if s.get("stream_id") == stream_id), None)
            state = str(stream.get("state", "")) if stream else ""
            if state != seen and state in ("connecting", "reconnecting") and on_state:
                assert stream is not None
                on_state(state, stream_failure(stream))
            seen = state
            if state == "live":
                return PullOutcome(True, state, "")
            if state in ("ended", "failed", "lost"):
                assert stream is not None
                played = False
                if state == "ended":  # a short source may end between two looks
                    timeline = await _get_json(
                        http, f"/streams/{stream_id}/timeline", base, bool(headers)
                    )
                    played = bool(timeline.get("segments"))
                return PullOutcome(played, state, stream_failure(stream))
            if time.monotonic() >= deadline:
                return PullOutcome(False, state, stream_failure(stream) if stream else "")
            await asyncio.sleep(poll_s)


async def stop_stream(server: str, stream_id: str, *, token: str | None = None) -> bool:
    """``DELETE /streams/{id}``; whether the server ended it (false: it was not live, or the
    server could not be asked)."""
    base = http_base(server)
    try:
        async with httpx.AsyncClient(
            base_url=base, trust_env=False, timeout=10.0, headers=auth_headers(token)
        ) as http:
            response = await http.delete(f"/streams/{stream_id}")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def fetch_timeline(server: str, stream_id: str, *, token: str | None = None) -> list[Segment]:
    """The genre timeline of a stream (``GET /streams/{id}/timeline``).

    Raises:
        ClientError: the server cannot be reached, wants a token with the ``read`` scope, or
            does not know the stream.
    """
    base = http_base(server)
    headers = auth_headers(token)
    async with httpx.AsyncClient(
        base_url=base, trust_env=False, timeout=30.0, headers=headers
    ) as http:
        body = await _get_json(http, f"/streams/{stream_id}/timeline", base, bool(headers))
    return segments_from_json(body.get("segments", []) if isinstance(body, dict) else [])


# -- summaries in words ------------------------------------------------------------------------

#: Genres named after the main one in :func:`format_shares`; passages in :func:`format_passages`.
SHARES_SHOWN = 4
PASSAGES_SHOWN = 12


def percent(share: float) -> str:
    """A share (``0..1``) as whole percent, ``72 %``; a trace under half a percent ``<1 %``."""
    value = 100.0 * share
    if 0.0 < value < 0.5:
        return "<1 %"
    return f"{value:.0f} %"


def format_shares(summary: StreamSummary, most: int = SHARES_SHOWN) -> str:
    """``rock 72 % (jazz 20 %, speech 8 %)``: the main genre and the next ``most`` shares."""
    if not summary.genres:
        return "none"
    main, *rest = summary.genres
    others = [f"{g.genre} {percent(g.share)}" for g in rest[:most]]
    if len(rest) > most:
        others.append(f"{len(rest) - most} more")
    text = f"{main.genre} {percent(main.share)}"
    return f"{text} ({', '.join(others)})" if others else text


def format_passage(start_s: float, end_s: float, genre: str) -> str:
    """``12.5-18.0 s jazz``."""
    return f"{start_s:.1f}-{end_s:.1f} s {genre}"


def format_passages(summary: StreamSummary, most: int = PASSAGES_SHOWN) -> str:
    """``0.0-12.5 s rock · 12.5-18.0 s jazz · …`` : the genres in order, with their times;
    after ``most`` of them, how many more (and first, how many earlier ones the summary left
    out)."""
    shown = [format_passage(p.start_s, p.end_s, p.genre) for p in summary.passages[:most]]
    if summary.more_passages > 0:
        shown.insert(0, f"{summary.more_passages} earlier …")
    left = len(summary.passages) - min(most, len(summary.passages))
    if left > 0:
        shown.append(f"… {left} more")
    return " · ".join(shown)


def format_summary(summary: StreamSummary) -> list[str]:
    """What a stream was, in two lines: its main genre with the others' shares, then the
    genres it went through with their times."""
    if summary.genre is None:
        return ["main genre: none (no window was computed: less audio than one window)"]
    return [f"main genre: {format_shares(summary)}", format_passages(summary)]


def format_ended(
    stream_id: str, seconds_sent: float, ended: StreamEnded | None, summary: StreamSummary | None
) -> list[str]:
    """The lines ``genrecast push`` ends with: how much went, then :func:`format_summary`."""
    computed = ended["windows_computed"] if ended else 0
    skipped = ended["windows_skipped"] if ended else 0
    reason = ended["reason"] if ended else ""
    why = f" ({reason})" if reason and reason != "stopped by client" else ""
    lines = [
        f"stream {stream_id} ended{why}: {seconds_sent:.1f} s of audio sent, "
        f"{computed} windows ({skipped} skipped)"
    ]
    if summary is not None:
        lines += format_summary(summary)
    return lines


def music_windows(result: ClassifyResult) -> int:
    """How many windows a ``POST /classify`` answer's probabilities are the mean of: those
    labelled music, or all of them when none is."""
    music = sum(1 for w in result["windows"] if w["genre"] not in NON_MUSIC_LABELS)
    return music or len(result["windows"])


def format_classify_headline(result: ClassifyResult) -> list[str]:
    """The two answers of a ``POST /classify`` result, each labelled: the whole file's mean of
    window probabilities (``genre``, what ``genrecast evaluate`` scores) and the smoothed
    timeline's main genre (its :func:`~stream_server.core.summary.summarize`)."""
    summary = summarize(segments_from_json(result["segments"]))
    lines = [
        f"whole file (mean of {music_windows(result)} windows): "
        f"{result['genre']} {100.0 * result['confidence']:.1f} %"
    ]
    if summary.genre is None:
        return [*lines, "timeline (smoothed): empty"]
    if len(summary.passages) == 1:
        only = summary.passages[0]
        passage = format_passage(only.start_s, only.end_s, "").rstrip()
        lines.append(f"timeline (smoothed): {only.genre} {passage} (100 %)")
    else:
        lines.append(f"timeline (smoothed): {format_shares(summary)}")
        lines.append(f"  {format_passages(summary)}")
    if summary.genre != result["genre"]:
        lines.append(
            "  (they differ: the whole-file figure averages every window's probabilities, the "
            "timeline follows the smoothed genre from window to window)"
        )
    return lines


def format_classify(result: ClassifyResult) -> str:
    """A ``POST /classify`` answer for people: its first line, the labelled headline
    (:func:`format_classify_headline`), then the full report."""
    from stream_server.inference.classify import format_result  # torch: only when printing

    first, _, rest = format_result(result).partition("\n")
    return "\n".join([first, "", *format_classify_headline(result), rest])


# -- watching ----------------------------------------------------------------------------------

#: ``genrecast watch``'s columns: (label, width); the last one takes what is left of the line.
WATCH_COLUMNS: Final[tuple[tuple[str, int], ...]] = (
    ("seq", 8),
    ("time", 8),
    ("stream", 12),
    ("stream time", 11),
    ("genre / event", 14),
    ("confidence", 10),
    ("latency", 8),
    ("top genres of the window", 0),
)


def _row(*cells: str) -> str:
    """Cells laid out in :data:`WATCH_COLUMNS`; fewer cells leave the rest out."""
    out = []
    for (_, width), cell in zip(WATCH_COLUMNS, cells, strict=False):
        out.append(cell.ljust(width) if width else cell)
    return "  ".join(out).rstrip()


def watch_header() -> str:
    """The line of column labels above :func:`format_message`'s lines."""
    return _row(*(label for label, _ in WATCH_COLUMNS))


def _clock(wall_time: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall_time))


def format_message(m: ServerMessage) -> str:
    """One human-readable line for a server message, in :data:`WATCH_COLUMNS`."""
    if m["type"] == "error":
        return f"error from the server: {m['message']}"
    seq, stream_id = f"[{m['seq']:>6}]", m["stream_id"]
    if m["type"] == "stream.started":
        name = f" {m['name']!r}" if m["name"] else ""
        return _row(seq, _clock(m["wall_time"]), stream_id, "", f"started:{name} ({m['kind']})")
    at = f"t={m['stream_time_s']:7.1f}s"
    clock = _clock(m["wall_time"])
    if m["type"] == "genre.update":
        top = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in m["top"])
        return _row(
            seq,
            clock,
            stream_id,
            at,
            m["genre"],
            f"{m['confidence']:.2f}",
            f"{m['latency_ms']:.0f} ms",
            top,
        )
    if m["type"] == "genre.change":
        previous = m["previous"] or "start"
        return _row(seq, clock, stream_id, at, f"change: {previous} -> {m['genre']}")
    if m["type"] == "track.change":
        return _row(seq, clock, stream_id, at, f"track: {m['title']}")
    counts = f"{m['windows_computed']} windows ({m['windows_skipped']} skipped)"
    return _row(seq, clock, stream_id, at, f"ended: {m['reason']}; {counts}")


def watch_banner(server: str, stream_id: str | None, since: int | None) -> str:
    """What ``genrecast watch`` says first: which server, which streams, from where."""
    which = f"stream {stream_id}" if stream_id else "every stream"
    start = "from now on" if since is None else f"replaying every message after seq {since}"
    return f"genrecast watch: {which} on {http_base(server)}, {start}"


async def watch(
    *,
    server: str,
    stream_id: str | None = None,
    since: int | None = None,
    out: TextIO = sys.stdout,
    log: TextIO = sys.stderr,
    as_json: bool = False,
    count: int | None = None,
    until_end: bool = False,
    reconnect: bool = True,
    token: str | None = None,
    connect_s: float = WATCH_CONNECT_S,
    retry_s: float = 1.0,
) -> int:
    """Print messages from ``/ws/updates``; resumes with ``since`` after a dropped connection.

    Says at once what it watches (:func:`watch_banner`, then the column labels of
    :func:`watch_header`; with ``as_json`` the banner goes to ``log`` and ``out`` carries JSON
    alone) and that it is waiting. Stops after ``count`` ``genre.update`` messages, or when the
    watched stream ends if ``until_end``. Returns the number of updates printed. ``token``: one
    with the ``read`` scope (see :func:`auth_headers`); a refused one is never retried.

    A server never reached is tried every ``retry_s`` seconds for ``connect_s`` seconds, then
    given up (:func:`no_server`); once connected, a dropped connection is tried again for ever
    (``reconnect``), and said once per drop on ``log``.

    Raises:
        ClientError: no server answered within ``connect_s``; the server refused the
            subscription; or (without ``reconnect``) it dropped the connection.
    """
    base = http_base(server)
    banner = watch_banner(server, stream_id, since)
    if as_json:
        print(banner, file=log)
    else:
        print(banner, watch_header(), sep="\n", file=out)
    print(f"waiting for updates from {base} …", file=log)
    out.flush()
    log.flush()
    updates = 0
    last_seq = since
    connected = False
    first_try = time.monotonic()
    lost_said = False
    while True:
        url = ws_url(server, "/ws/updates", stream_id=stream_id, since=last_seq)
        lost: BaseException | str
        try:
            async with open_ws(url, token=token, scope=READ) as ws:
                if lost_said and connected:
                    after = f" after seq {last_seq}" if last_seq is not None else ""
                    print(f"connected again; resuming{after}", file=log, flush=True)
                elif lost_said:
                    print(f"connected to {base}", file=log, flush=True)
                connected, lost_said = True, False
                async for raw in ws:
                    message = parse_server_message(raw)
                    if message["type"] != "error":
                        last_seq = message["seq"]
                    print(dumps(message) if as_json else format_message(message), file=out)
                    out.flush()
                    if message["type"] == "genre.update":
                        updates += 1
                        if count is not None and updates >= count:
                            return updates
                    if (
                        until_end
                        and message["type"] == "stream.ended"
                        and stream_id in (None, message["stream_id"])
                    ):
                        return updates
                lost = close_words(ws.close_code, ws.close_reason or "")  # closed cleanly
        except (ConnectionClosed, OSError, TimeoutError, InvalidHandshake) as exc:
            lost = exc  # refusals of the handshake are ClientErrors (open_ws): not retried
        words = lost if isinstance(lost, str) else error_words(lost)
        if not connected:
            left = connect_s - (time.monotonic() - first_try)
            if left <= 0:
                raise no_server(base, words)
            if not lost_said:
                print(
                    f"no answer yet ({words}); trying for {connect_s:g} s …", file=log, flush=True
                )
                lost_said = True
            await asyncio.sleep(min(retry_s, left))  # the last try at connect_s
            continue
        if not reconnect:
            raise ClientError(f"lost the updates connection: {words}")
        if not lost_said:
            print(f"lost the connection to {base} ({words}); reconnecting …", file=log, flush=True)
            lost_said = True
        await asyncio.sleep(retry_s)


def print_progress(stream: TextIO = sys.stderr) -> ProgressFn:
    """A progress callback drawing ``12.3 s / 30.0 s  41%`` on one terminal line."""
    last = [0.0]

    def show(done_s: float, total_s: float | None) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and (total_s is None or done_s < total_s):
            return
        last[0] = now
        if total_s:
            pct = min(100.0, 100.0 * done_s / total_s)
            stream.write(f"\r  sent {done_s:7.1f} s / {total_s:.1f} s  {pct:3.0f}%")
        else:
            stream.write(f"\r  sent {done_s:7.1f} s")
        stream.flush()

    return show
