"""A soak's client worker process: synthetic music pushed at real time and subscribers that
count what they receive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import time
from array import array
from collections.abc import Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from stream_server.errors import ClientError
from stream_server.serve.auth import INGEST
from stream_server.tools.client import open_ws, ws_url
from stream_server.tools.soak.figures import (
    Histogram,
    StreamOutcome,
    SubscriberOutcome,
    WorkerResult,
    WorkerSpec,
)
from stream_server.tools.soak.options import (
    CLIP_S,
    CLIPS,
    END_GRACE_S,
    FRAME_S,
    RESAMPLER_LAG,
    SAMPLE_RATE,
    SEND_TIMES_KEPT,
)

# -- synthetic audio --------------------------------------------------------------------------


def synthetic_music(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Mono float32 in [-1, 1]: a chord of decaying harmonic tones every beat (0.5 s), a bass
    note every bar (2 s) and a noise hit on every beat."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    out = np.zeros(n)
    beat = round(0.5 * rate)
    local = np.arange(beat) / rate
    for i0 in range(0, n, beat):
        seg = local[: min(beat, n - i0)]
        root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
        env = np.exp(-4 * seg)
        for ratio in (1.0, 1.25, 1.5, 2.0):
            out[i0 : i0 + seg.size] += 0.12 * env * np.sin(2 * np.pi * root * ratio * seg)
        if (i0 // beat) % 4 == 0:
            bar = np.arange(min(4 * beat, n - i0)) / rate
            out[i0 : i0 + bar.size] += 0.2 * np.exp(-1.5 * bar) * np.sin(np.pi * root * bar)
        out[i0 : i0 + seg.size] += 0.05 * np.exp(-30 * seg) * rng.standard_normal(seg.size)
    return np.clip(out, -1, 1).astype(np.float32)


def _frames(seed: int) -> list[bytes]:
    """One looped clip as s16le frames of :data:`FRAME_S`."""
    audio = synthetic_music(CLIP_S, SAMPLE_RATE, seed)
    pcm = (audio * 32767).astype("<i2").tobytes()
    step = round(FRAME_S * SAMPLE_RATE) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


# -- the worker process ------------------------------------------------------------------------


@dataclass
class _Sent:
    """When a stream's frames went out: frame ``k`` at ``times[k % SEND_TIMES_KEPT]``
    (``time.monotonic()`` seconds), for the last :data:`SEND_TIMES_KEPT` of ``count`` frames."""

    times: array[float]
    count: int = 0


class _Worker:
    """One worker's asyncio side: pushers, subscribers and a loop-lag probe."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.t0 = self.end = 0.0  # set by run()
        self.clips = [_frames(seed) for seed in range(CLIPS)]
        self.step = round(FRAME_S * SAMPLE_RATE)
        self.sent: dict[str, _Sent] = {}
        #: Per slot, one queue per subscriber of the slot: each new stream's ``(id, seq)``, then
        #: ``None`` when the slot has no more streams.
        self.listeners: dict[int, list[asyncio.Queue[tuple[str, int] | None]]] = {}
        self.server_latency = Histogram()
        self.client_delay = Histogram()
        self.loop_lag = Histogram()
        self.errors: list[str] = []

    async def run(self, start_wall: float) -> WorkerResult:
        """Run the share of the soak from ``start_wall`` (``time.time()`` seconds)."""
        # time.time() is common to every process; the loop runs on time.monotonic()
        self.t0 = time.monotonic() + (start_wall - time.time())
        self.end = self.t0 + self.spec.duration_s
        cpu0, wall0 = time.process_time(), time.monotonic()
        streams: list[StreamOutcome] = []
        subs = [SubscriberOutcome(i, slot) for i, slot in self.spec.subscribers]
        self.listeners = {slot: [] for slot in self.spec.slots}
        queues = {}
        for sub in subs:
            if sub.slot is not None:
                queues[sub.index] = queue = asyncio.Queue[tuple[str, int] | None]()
                self.listeners[sub.slot].append(queue)
        probe = asyncio.create_task(self._probe_lag())
        try:
            await asyncio.gather(
                *(self._guard(self._slot(n, streams), f"slot {n}") for n in self.spec.slots),
                *(
                    self._guard(self._subscribe(s, queues.get(s.index)), f"subscriber {s.index}")
                    for s in subs
                ),
            )
        finally:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)
        return WorkerResult(
            index=self.spec.index,
            streams=streams,
            subscribers=subs,
            server_latency=self.server_latency,
            client_delay=self.client_delay,
            loop_lag=self.loop_lag,
            cpu_s=time.process_time() - cpu0,
            wall_s=time.monotonic() - wall0,
            errors=self.errors,
        )

    async def _guard(self, job: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``job``; an error nobody expected is counted, and the others go on."""
        try:
            await job
        except Exception as exc:
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")

    async def _probe_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            self.loop_lag.add(max(0.0, time.monotonic() - before - 0.1) * 1000.0)

    async def _sleep_until(self, when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _lifetime(self, slot: int, generation: int) -> float:
        """Seconds stream ``generation`` of ``slot`` lives: the rest of the soak, or with churn
        0.5 to 1.4 times ``churn_s``, varied by slot and generation."""
        churn_s = self.spec.churn_s
        if not churn_s:
            return math.inf
        return churn_s * (0.5 + ((slot * 7 + generation * 3) % 10) / 10.0)

    def _announce(self, slot: int, item: tuple[str, int] | None) -> None:
        for queue in self.listeners[slot]:
            queue.put_nowait(item)

    async def _slot(self, slot: int, outcomes: list[StreamOutcome]) -> None:
        """Stream slot ``slot``: one stream after another until the soak's end."""
        spec = self.spec
        try:
            await self._sleep_until(self.t0 + spec.ramp_s * slot / spec.streams)
            generation = 0
            while time.monotonic() < self.end:
                out = StreamOutcome(slot, generation)
                outcomes.append(out)
                until = min(self.end, time.monotonic() + self._lifetime(slot, generation))
                if not await self._push(out, until):
                    return
                generation += 1
        finally:
            self._announce(slot, None)

    async def _push(self, out: StreamOutcome, until: float) -> bool:
        """Push one stream until ``until`` (``time.monotonic()``), then stop it; whether it
        ended as it should."""
        spec = self.spec
        frames = self.clips[out.slot % CLIPS]
        start = {
            "type": "start",
            "sample_rate": SAMPLE_RATE,
            "channels": 1,
            "format": "s16le",
            "name": f"soak-{out.slot}-{out.generation}",
        }
        try:
            async with open_ws(
                ws_url(spec.url, "/ws/ingest"), token=spec.token, scope=INGEST
            ) as ws:
                await ws.send(json.dumps(start))
                started = await self._expect(ws, "stream.started")
                out.stream_id = started["stream_id"]
                sent = _Sent(array("d", bytes(8 * SEND_TIMES_KEPT)))
                self.sent[out.stream_id] = sent
                self._announce(out.slot, (out.stream_id, int(started["seq"])))
                t_start = time.monotonic()
                k = 0
                offset = (out.slot * 37 + out.generation * 101) % len(frames)
                while True:
                    due = t_start + k * FRAME_S
                    await self._sleep_until(due)
                    now = time.monotonic()
                    if now >= until:
                        break
                    out.max_send_lag_s = max(out.max_send_lag_s, now - due)
                    await ws.send(frames[(offset + k) % len(frames)])
                    sent.times[k % SEND_TIMES_KEPT] = time.monotonic()
                    k += 1
                    sent.count = k
                out.seconds_sent = k * FRAME_S
                await ws.send(json.dumps({"type": "stop"}))
                ended = await self._expect(ws, "stream.ended")
                out.ended = True
                out.windows_computed = int(ended["windows_computed"])
                out.windows_skipped = int(ended["windows_skipped"])
                out.reason = str(ended["reason"])
                return True
        except (ClientError, ConnectionClosed, OSError, TimeoutError) as exc:
            what = type(exc).__name__ if not str(exc) else str(exc)
            self.errors.append(f"stream {out.slot} ({out.stream_id or 'not started'}): {what}")
            return False

    async def _expect(self, ws: ClientConnection, wanted: str) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), END_GRACE_S))
            if message["type"] == "error":
                raise ClientError(f"server error ({message['code']}): {message['message']}")
            if message["type"] == wanted:
                return message

    async def _subscribe(
        self, out: SubscriberOutcome, queue: asyncio.Queue[tuple[str, int] | None] | None
    ) -> None:
        """Subscriber ``out``: every stream (one connection), or each stream of its slot in
        turn (``queue`` announces them)."""
        spec = self.spec
        if queue is None:
            # connections spread like the streams; since=0 replays anything published before
            await self._sleep_until(self.t0 + spec.ramp_s * out.index / spec.subscriber_count)
            await self._read(out, ws_url(spec.url, "/ws/updates", since=0), None)
            return
        while (announced := await queue.get()) is not None:
            stream_id, seq = announced
            out.followed.append(stream_id)
            url = ws_url(spec.url, "/ws/updates", stream_id=stream_id, since=seq - 1)
            if not await self._read(out, url, stream_id):
                return

    async def _read(self, out: SubscriberOutcome, url: str, stream_id: str | None) -> bool:
        """Read updates from ``url`` until ``stream_id`` ends (``None``: every stream of the
        soak); whether that happened."""
        last_seq = 0
        try:
            async with open_ws(url, token=self.spec.token) as ws:
                while not self._done(out, stream_id):
                    remaining = self.end + END_GRACE_S - time.monotonic()
                    if remaining <= 0:
                        self.errors.append(
                            f"subscriber {out.index}: no stream.ended from "
                            f"{self._waiting_for(out, stream_id)} {END_GRACE_S:g} s after the end"
                        )
                        return False
                    try:
                        async with asyncio.timeout(min(remaining, 1.0)):
                            raw = await ws.recv()
                    except TimeoutError:
                        continue
                    received = time.monotonic()
                    message = json.loads(raw)
                    if message["type"] == "error":
                        out.resume_gaps += message.get("code") == "resume_gap"
                        self.errors.append(f"subscriber {out.index}: {message.get('message')}")
                        continue
                    seq = int(message["seq"])
                    if seq <= last_seq:
                        out.out_of_order += 1
                    elif stream_id is None:
                        out.seq_gaps += seq - last_seq - 1
                    last_seq = max(seq, last_seq)
                    self._count(out, message, received)
            return True
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            out.close = f"{rcvd.code} {rcvd.reason}".strip() if rcvd else "no close frame"
            out.dropped = rcvd is not None and rcvd.code == 1013
            self.errors.append(f"subscriber {out.index}: closed by the server ({out.close})")
        except (ClientError, OSError, TimeoutError) as exc:
            self.errors.append(f"subscriber {out.index}: {exc or type(exc).__name__}")
        return False

    def _count(self, out: SubscriberOutcome, message: dict[str, Any], received: float) -> None:
        """Count one published message; ``received``: its ``time.monotonic()``."""
        kind, stream_id = message["type"], message["stream_id"]
        if kind == "genre.update":
            out.updates_by_stream[stream_id] = out.updates_by_stream.get(stream_id, 0) + 1
            self.server_latency.add(float(message["latency_ms"]))
            sent = self.sent.get(stream_id)
            if sent is not None:
                at = float(message["stream_time_s"]) * SAMPLE_RATE + RESAMPLER_LAG
                k = int(at // self.step)
                if sent.count - SEND_TIMES_KEPT <= k < sent.count:
                    self.client_delay.add((received - sent.times[k % SEND_TIMES_KEPT]) * 1000.0)
        elif kind == "stream.started":
            out.started.add(stream_id)
        elif kind == "stream.ended":
            out.ended[stream_id] = int(message["windows_computed"])

    def _done(self, out: SubscriberOutcome, stream_id: str | None) -> bool:
        """Whether what ``out`` reads now has ended: ``stream_id``, or (``None``: following all)
        every stream of the soak's first generation, or after the end every stream it saw
        start."""
        if stream_id is not None:
            return stream_id in out.ended
        if not self.spec.churn_s and len(out.ended) >= self.spec.streams:
            return True
        return time.monotonic() > self.end + 2.0 and out.started <= out.ended.keys()

    def _waiting_for(self, out: SubscriberOutcome, stream_id: str | None) -> str:
        if stream_id is not None:
            return f"stream {stream_id} of slot {out.slot}"
        return f"{len(out.started - out.ended.keys())} streams"


def worker_main(conn: Connection) -> None:
    """A worker process: its :class:`WorkerSpec` in, ``"ready"`` out once its audio is made,
    the start time (``time.time()`` seconds) in, its :class:`WorkerResult` (or an error text) out.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the soak process stops the workers itself
    try:
        spec: WorkerSpec = conn.recv()
        worker = _Worker(spec)
        conn.send("ready")
        start_wall: float = conn.recv()
        result: WorkerResult | str = asyncio.run(worker.run(start_wall))
    except Exception as exc:  # reported to the soak process, which counts it as an error
        result = f"client worker failed: {type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        conn.send(result)
    conn.close()
