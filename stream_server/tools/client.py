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
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TextIO
from urllib.parse import urlencode

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stream_server.errors import AccessRefused, ClientError
from stream_server.media.decode import iter_pcm, probe
from stream_server.messages import (
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
        raise ClientError(f"cannot reach the server at {base}: {exc}") from None
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
    async with open_ws(ws_url(server, "/ws/ingest"), token=token, scope=INGEST) as ws:
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
                raise ClientError(f"the server closed the stream: {exc}") from None
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
    raise ClientError(f"lost the updates connection while pacing: {exc}")


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
        raise ClientError(f"cannot reach the server at {base}: {exc}") from None
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


async def pull(
    source: str, *, server: str, name: str = "", token: str | None = None
) -> dict[str, Any]:
    """Ask the server to pull ``source`` itself (``POST /streams``); returns the new stream.

    ``source`` is an http(s) URL or a file in the server's media folder; ``token`` one with the
    ``admin`` scope (see :func:`auth_headers`).

    Raises:
        ClientError: the server cannot be reached, wants a token, or refused the source.
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
        raise ClientError(f"cannot reach the server at {base}: {exc}") from None
    _check_access(response, ADMIN, bool(headers))
    try:
        reply: dict[str, Any] = response.json()
    except ValueError:
        reply = {"error": response.text}
    if response.status_code != 201:
        raise ClientError(f"the server refused to pull {source!r}: {reply.get('error', reply)}")
    return reply


def format_message(m: ServerMessage) -> str:
    """One human-readable line for a server message."""
    if m["type"] == "genre.update":
        top = ", ".join(f"{t['label']} {t['prob']:.2f}" for t in m["top"])
        return (
            f"[{m['seq']:>6}] {m['stream_id']}  t={m['stream_time_s']:7.1f}s  "
            f"{m['genre']:<12} {m['confidence']:.2f}  ({top})  {m['latency_ms']:.0f} ms"
        )
    if m["type"] == "genre.change":
        return (
            f"[{m['seq']:>6}] {m['stream_id']}  t={m['stream_time_s']:7.1f}s  "
            f"genre change: {m['previous']} -> {m['genre']}"
        )
    if m["type"] == "track.change":
        return (
            f"[{m['seq']:>6}] {m['stream_id']}  t={m['stream_time_s']:7.1f}s  track: {m['title']}"
        )
    if m["type"] == "error":
        return f"error ({m['code']}): {m['message']}"
    return f"[{m['seq']:>6}] {m['stream_id']}  {m['type']}"


async def watch(
    *,
    server: str,
    stream_id: str | None = None,
    since: int | None = None,
    out: TextIO = sys.stdout,
    as_json: bool = False,
    count: int | None = None,
    until_end: bool = False,
    reconnect: bool = True,
    token: str | None = None,
) -> int:
    """Print messages from ``/ws/updates``; resumes with ``since`` after a dropped connection.

    Stops after ``count`` ``genre.update`` messages, or when the watched stream ends if
    ``until_end``. Returns the number of updates printed. ``token``: one with the ``read`` scope
    (see :func:`auth_headers`); a refused one is never retried.

    Raises:
        ClientError: the server refused the subscription, or (without ``reconnect``) dropped it.
    """
    updates = 0
    last_seq = since
    while True:
        url = ws_url(server, "/ws/updates", stream_id=stream_id, since=last_seq)
        try:
            async with open_ws(url, token=token, scope=READ) as ws:
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
        except (ConnectionClosed, OSError) as exc:
            if not reconnect:
                raise ClientError(f"updates connection lost: {exc}") from None
            print(f"connection lost ({exc}); reconnecting", file=sys.stderr)
            await asyncio.sleep(1.0)


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
