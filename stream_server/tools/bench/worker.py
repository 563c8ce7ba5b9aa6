"""The bench's load processes, each with one asyncio loop.

A pusher opens its share of the streams on ``/ws/ingest`` (s16le mono PCM at the model's rate,
uncompressed), says it is ready, and at the start time the parent gives sends each stream's
frames at ``speed`` times real time from the stream's own phase, recording when each frame went
out (:class:`~stream_server.tools.bench.figures.StreamLog`); then, when the parent gave a time to
hold until, nothing until then; then ``stop`` and the stream's ``stream.ended``. The subscriber
follows ``/ws/updates`` and records when each ``genre.update`` arrived
(:class:`~stream_server.tools.bench.figures.UpdateLog`), until every stream of its run ended or
the parent says ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from stream_server.errors import AccessRefused, ClientError
from stream_server.serve.auth import INGEST, READ
from stream_server.tools.bench.audio import ClipSet, Pcm, StreamPlan, looped
from stream_server.tools.bench.figures import StreamLog, UpdateLog
from stream_server.tools.bench.options import END_GRACE_S
from stream_server.tools.client import open_ws, ws_url


@dataclass(frozen=True)
class PusherSpec:
    """One pusher's share of a run: ``plans`` of the streams it sends, named ``name`` plus the
    stream's index. Each sends ``total_samples`` samples of ``clips`` in frames of
    ``frame_samples``, at ``speed`` times real time, to ``url`` (``ws://host:port``)."""

    url: str
    token: str | None
    name: str
    clips: ClipSet
    frame_samples: int
    total_samples: int
    speed: float
    plans: tuple[StreamPlan, ...]


@dataclass(frozen=True)
class SubscriberSpec:
    """The subscriber of a run: ``streams`` streams whose names start with ``name``."""

    url: str
    token: str | None
    name: str
    streams: int


@dataclass
class PusherResult:
    logs: list[StreamLog]
    cpu_s: float


@dataclass
class SubscriberResult:
    """Updates by stream id; ``ended``: the run's streams whose ``stream.ended`` arrived."""

    updates: dict[str, UpdateLog]
    ended: set[str] = field(default_factory=set)
    error: str = ""
    cpu_s: float = 0.0


@dataclass(frozen=True)
class WorkerFailure:
    """A load process that could not do its part; ``client_error``: the server refused it (a
    :class:`~stream_server.errors.ClientError`, such as a missing token)."""

    message: str
    client_error: bool = False


async def _wait_pipe(conn: Connection) -> Any:
    """The next object from the parent; the loop serves the sockets meanwhile."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        while not conn.poll():
            readable.clear()
            await readable.wait()
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv()


async def _sleep_until(when: float) -> float:
    """Sleep until ``time.monotonic()`` reaches ``when``; the seconds it is past ``when`` then."""
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    return max(0.0, time.monotonic() - when)


async def _expect(ws: ClientConnection, wanted: str) -> dict[str, Any]:
    """The next message of type ``wanted`` (others skipped); an ``error`` message raises."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), END_GRACE_S)
        message: dict[str, Any] = json.loads(raw)
        if message["type"] == "error":
            raise ClientError(f"server error ({message['code']}): {message['message']}")
        if message["type"] == wanted:
            return message


class _Pusher:
    """One pusher process's streams."""

    def __init__(self, spec: PusherSpec) -> None:
        self.spec = spec
        self.clips = spec.clips.load()
        self.rate = spec.clips.sample_rate

    async def run(self, conn: Connection) -> PusherResult:
        spec = self.spec
        async with contextlib.AsyncExitStack() as stack:
            opened = await asyncio.gather(*(self._open(stack, plan) for plan in spec.plans))
            conn.send("ready")
            start: float
            hold_until: float | None
            start, hold_until = await _wait_pipe(conn)
            cpu0 = time.process_time()
            logs = await asyncio.gather(
                *(
                    self._push(ws, log, plan, start, hold_until)
                    for (ws, log), plan in zip(opened, spec.plans, strict=True)
                    if ws is not None
                )
            )
        failed = [log for ws, log in opened if ws is None]
        return PusherResult([*logs, *failed], time.process_time() - cpu0)

    async def _open(
        self, stack: contextlib.AsyncExitStack, plan: StreamPlan
    ) -> tuple[ClientConnection | None, StreamLog]:
        """Open and start stream ``plan``: its socket (``None``: refused) and its log, with its
        id or the error. A refused token raises :class:`AccessRefused`: nothing would start."""
        spec = self.spec
        log = StreamLog(plan.index)
        start = {
            "type": "start",
            "sample_rate": self.rate,
            "channels": 1,
            "format": "s16le",
            "name": f"{spec.name}{plan.index}",
        }
        try:
            url = ws_url(spec.url, "/ws/ingest")
            ws = await stack.enter_async_context(open_ws(url, token=spec.token, scope=INGEST))
            await ws.send(json.dumps(start))
            started = await _expect(ws, "stream.started")
        except AccessRefused:
            raise
        except (ClientError, ConnectionClosed, OSError, TimeoutError) as exc:
            log.error = _describe(exc)
            return None, log
        log.stream_id = str(started["stream_id"])
        return ws, log

    async def _push(
        self,
        ws: ClientConnection,
        log: StreamLog,
        plan: StreamPlan,
        start: float,
        hold_until: float | None,
    ) -> StreamLog:
        """Send the stream's frames paced from ``start + phase``, keep it open and silent until
        ``hold_until`` (``time.monotonic()``; ``None``: no hold), then stop it."""
        spec = self.spec
        frame = spec.frame_samples
        count = math.ceil(spec.total_samples / frame)
        samples = np.minimum(np.arange(1, count + 1, dtype=np.int64) * frame, spec.total_samples)
        times = np.zeros(count, dtype=np.float64)
        clip: Pcm = self.clips[plan.clip]
        frame_wall_s = frame / self.rate / spec.speed
        first = start + plan.phase_s
        sent = 0
        try:
            for k in range(count):
                late = await _sleep_until(first + k * frame_wall_s)
                log.max_lag_s = max(log.max_lag_s, late)
                size = int(samples[k]) - (int(samples[k - 1]) if k else 0)
                pcm = looped(clip, plan.offset + k * frame, size)
                await ws.send(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
                times[k] = time.monotonic()
                sent = k + 1
            if hold_until is not None:
                await _sleep_until(hold_until)
            await _stop(ws, log)
        except (ClientError, ConnectionClosed, OSError, TimeoutError) as exc:
            log.error = _describe(exc)
        log.sent_samples, log.sent_times = samples[:sent], times[:sent]
        return log


async def _stop(ws: ClientConnection, log: StreamLog) -> None:
    """Send ``stop``; record the stream's ``stream.ended`` in ``log``."""
    await ws.send(json.dumps({"type": "stop"}))
    ended = await _expect(ws, "stream.ended")
    log.ended_at = time.monotonic()
    log.ended = True
    log.windows_computed = int(ended["windows_computed"])
    log.windows_skipped = int(ended["windows_skipped"])


class _Subscriber:
    """The subscriber process: every update of the run's streams, with its receipt time."""

    def __init__(self, spec: SubscriberSpec) -> None:
        self.spec = spec
        self.rows: dict[str, list[tuple[float, float, float]]] = {}
        self.ours: set[str] = set()
        self.ended: set[str] = set()

    async def run(self, conn: Connection) -> SubscriberResult:
        spec = self.spec
        error = ""
        cpu0 = time.process_time()
        url = ws_url(spec.url, "/ws/updates")
        async with open_ws(url, token=spec.token, scope=READ) as ws:
            conn.send("ready")
            try:
                await self._read(ws, conn)
            except ConnectionClosed as exc:
                error = f"the server closed /ws/updates: {exc}"
        return SubscriberResult(self._logs(), self.ended, error, time.process_time() - cpu0)

    async def _read(self, ws: ClientConnection, conn: Connection) -> None:
        while len(self.ended) < self.spec.streams and not conn.poll():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.2)
            except TimeoutError:
                continue
            received = time.monotonic()
            self._take(json.loads(raw), received)

    def _take(self, message: dict[str, Any], received: float) -> None:
        """Record one message received at ``received`` (``time.monotonic()`` seconds)."""
        kind = message.get("type")
        stream_id = str(message.get("stream_id", ""))
        if kind == "genre.update":
            row = (float(message["stream_time_s"]), received, float(message["latency_ms"]))
            self.rows.setdefault(stream_id, []).append(row)
        elif kind == "stream.started" and str(message.get("name", "")).startswith(self.spec.name):
            self.ours.add(stream_id)
        elif kind == "stream.ended" and stream_id in self.ours:
            self.ended.add(stream_id)

    def _logs(self) -> dict[str, UpdateLog]:
        logs = {}
        for stream_id, rows in self.rows.items():
            table = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
            logs[stream_id] = UpdateLog(table[:, 0], table[:, 1], table[:, 2])
        return logs


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _serve(conn: Connection, make: Callable[[Any], Coroutine[Any, Any, object]]) -> None:
    """A load process: its spec in, ``"ready"`` out when set, its result (or a
    :class:`WorkerFailure`) out at the end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops its children itself
    result: object
    try:
        result = asyncio.run(make(conn.recv()))
    except ClientError as exc:
        result = WorkerFailure(str(exc), client_error=True)
    except Exception as exc:  # reported to the parent, which raises it there
        result = WorkerFailure(f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(OSError):
        conn.send(result)
    conn.close()


def pusher_main(conn: Connection) -> None:
    """A pusher process (see the module docstring)."""
    _serve(conn, lambda spec: _Pusher(spec).run(conn))


def subscriber_main(conn: Connection) -> None:
    """The subscriber process (see the module docstring)."""
    _serve(conn, lambda spec: _Subscriber(spec).run(conn))
