"""``genrecast soak``: a real server under N live streams and M subscribers for T minutes.

Processes. The soak starts ``genrecast serve`` as a separate process on a free loopback port, with
a temporary config (the given one, with the stream limits raised to N, the database in a temporary
folder, ``--model``/``--device`` applied) and drives it from client worker processes: the server
is measured from outside, never from inside its own event loop. Each worker runs one asyncio loop
with its share of the streams and of the subscribers (:func:`auto_workers` picks how many
workers); the soak process itself only starts and stops the others, samples the server and adds up.

Streams. Each stream pushes real-time paced PCM (44.1 kHz mono s16le, 0.1 s frames) of synthetic
music (decaying chords, a bass line and a noise beat, looped every 30 s) to ``/ws/ingest``. The
N stream slots start spread over the first tenth of the soak (at most 10 s), push until the
soak's end, then send ``stop`` and take ``stream.ended`` (``windows_computed``,
``windows_skipped``). With ``churn_s``, each slot instead ends its stream and opens a new one
(a new id, a new connection) after ``churn_s`` seconds on average (0.5 to 1.4 times, varied by
slot and generation), again and again until the soak's end: streams come and go all the time,
as on a real server, and per-stream state that is never released shows as RSS growth.

Subscribers. ``follow="stream"`` (the default): subscriber ``j`` follows slot ``j mod N`` only:
each stream of the slot in turn (``/ws/updates?stream_id=ID&since=SEQ``, from the stream's own
``stream.started``, until its ``stream.ended``);
``follow="all"``: every subscriber follows every stream (``/ws/updates?since=0``), so the
server sends N times as many messages. Subscribers read promptly (parse and count, nothing else)
and never reconnect: one the server drops for being slow (close code 1013) keeps the updates it
got, and every one it did not get is lost.

What is counted.

* Lost updates: for each subscriber, the ``genre.update`` messages published for the streams it
  follows (each stream's ``windows_computed``, which counts exactly the updates published for
  it) minus those it received. Also counted: subscribers dropped, messages whose ``seq`` does not
  increase, and, with ``follow="all"``, gaps in the server-wide ``seq`` sequence.
* Latency, per delivered update: the server's ``latency_ms`` (arrival of the window's last sample
  to publication) and the client-side delay (receipt minus the moment the frame that completed the
  window was sent; for streams pushed from the subscriber's own worker, to within one frame).
* Server RSS in MiB (``VmRSS`` of ``/proc/PID/status``), sampled every ``T/60`` (0.5 to 5 s):
  idle before the streams, at the end of the warm-up (until the streams' ring buffers are full,
  at least 60 s, at most half the soak: :func:`schedule`), at the end of the streams, after they
  ended, the maximum, and its growth per hour (least-squares slope over the samples from the end
  of the warm-up to the end of the streams). Also the server's CPU share (``/proc/PID/stat``), the
  workers' CPU share and event-loop lag (a loop that lags is a client that cannot keep up: the
  figures then say less about the server).
* Errors: streams refused or cut, subscribers closed, streams without ``stream.ended``,
  ``ERROR`` lines and tracebacks in the server's log (``WARNING`` lines are only counted), a server
  that does not stop within :data:`STOP_TIMEOUT_S` of SIGINT or exits otherwise than
  :data:`CLEAN_EXITS`.

Bounds: at most :data:`MAX_MINUTES` minutes, :data:`MAX_STREAMS` streams and
:data:`MAX_SUBSCRIBERS` subscribers; loopback only. Linux only (``/proc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from array import array
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from stream_server.config import Config, config_from_dict, load_config
from stream_server.errors import ClientError, SoakError
from stream_server.serve.auth import INGEST, TOKEN_ENV, is_loopback_host
from stream_server.tools.client import open_ws, ws_url

#: Upper bounds of a soak: it is a bounded test, not a load generator.
MAX_MINUTES = 60.0
MAX_STREAMS = 2000
MAX_SUBSCRIBERS = 2000
#: Most client worker processes.
MAX_WORKERS = 32
#: Shortest average stream life with churn (seconds).
MIN_CHURN_S = 5.0

#: PCM the streams send: rate (Hz), seconds per frame, seconds of synthetic music looped.
SAMPLE_RATE = 44100
FRAME_S = 0.1
CLIP_S = 30.0
#: Distinct synthetic clips; stream ``i`` plays clip ``i mod CLIPS`` from its own offset.
CLIPS = 8
#: Input samples the server's resampler may hold back before a window is complete (about 14 for
#: 44100 -> 22050 Hz): a window ending at stream time ``t`` is completed by the frame holding
#: input sample ``t * SAMPLE_RATE + RESAMPLER_LAG``.
RESAMPLER_LAG = 32
#: Frame send times kept per stream (seconds of frames: this times FRAME_S); older windows have
#: no client-side delay.
SEND_TIMES_KEPT = 600

#: Seconds a stream may take to end after ``stop``, subscribers to see the last ``stream.ended``.
END_GRACE_S = 30.0
#: Seconds the server may take to load its model and print its "ready on" line.
READY_TIMEOUT_S = 300.0
#: Seconds the worker processes may take to start (imports, synthetic audio).
WORKER_START_S = 120.0
#: Seconds the server may take to stop after SIGINT before it is killed.
STOP_TIMEOUT_S = 30.0
#: Seconds of samples after the warm-up below which a growth per hour is mostly noise.
SHORT_FIT_S = 300.0
#: Exit statuses of a server that stopped as asked after SIGINT (130: the interrupt, once it
#: has drained).
CLEAN_EXITS = (0, 130)

#: Streams plus subscribers one worker process takes on, and ``genre.update`` messages per
#: second it takes in. Measured on a shared core: 40 streams and 40 subscribers (400 frames out,
#: 80 updates in a second) took 5 % of it, 20 streams and 20 subscribers following all (200
#: frames out, 800 updates in) 7 %; these bounds leave a worker well under half a core.
STREAMS_PER_WORKER = 250
UPDATES_PER_S_PER_WORKER = 4000.0

Follow = Literal["stream", "all"]


@dataclass(frozen=True)
class SoakOptions:
    """What to run. ``minutes`` of soak; ``config`` the base config (``None``: the project's);
    ``model``/``device`` override it; ``token`` the clients send (``None``: ``$GENRECAST_TOKEN``),
    also given to the server as ``$GENRECAST_TOKEN``; ``host`` a loopback address to serve on;
    ``workers`` client processes (0: :func:`auto_workers`); ``churn_s`` the average life of a
    stream in seconds (0: every stream lives the whole soak)."""

    streams: int = 10
    subscribers: int = 10
    minutes: float = 1.0
    config: Path | None = None
    model: str | None = None
    device: str | None = None
    token: str | None = None
    host: str = "127.0.0.1"
    follow: Follow = "stream"
    workers: int = 0
    churn_s: float = 0.0

    def check(self) -> None:
        """Raise :class:`SoakError` for anything outside the soak's bounds."""
        if not 1 <= self.streams <= MAX_STREAMS:
            raise SoakError(f"--streams must be 1 to {MAX_STREAMS}, got {self.streams}")
        if not 0 <= self.subscribers <= MAX_SUBSCRIBERS:
            raise SoakError(f"--subscribers must be 0 to {MAX_SUBSCRIBERS}, got {self.subscribers}")
        if not 0 < self.minutes <= MAX_MINUTES:
            raise SoakError(
                f"--minutes must be more than 0 and at most {MAX_MINUTES:g}, got {self.minutes:g}"
            )
        if self.minutes * 60.0 < 2 * FRAME_S * 10:
            raise SoakError(f"--minutes {self.minutes:g} is shorter than 2 s")
        if not is_loopback_host(self.host):
            raise SoakError(
                f"the soak runs on loopback only: {self.host!r} is not a loopback address"
            )
        if self.follow not in ("stream", "all"):
            raise SoakError(f"--follow must be 'stream' or 'all', got {self.follow!r}")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise SoakError(f"--workers must be 0 (auto) to {MAX_WORKERS}, got {self.workers}")
        if self.churn_s and not MIN_CHURN_S <= self.churn_s <= self.minutes * 60.0:
            raise SoakError(
                f"--churn must be 0 (off) or {MIN_CHURN_S:g} s to the soak's length, "
                f"got {self.churn_s:g}"
            )


def auto_workers(streams: int, subscribers: int, follow: Follow, hop_s: float) -> int:
    """Client worker processes for a soak: enough that none handles more than
    :data:`STREAMS_PER_WORKER` streams plus subscribers or takes in more than
    :data:`UPDATES_PER_S_PER_WORKER` updates per second (``hop_s``: seconds between a stream's
    updates), and no more than the CPUs (at least one)."""
    followed = streams if follow == "all" else 1
    updates_per_s = subscribers * followed / hop_s
    wanted = max(
        math.ceil((streams + subscribers) / STREAMS_PER_WORKER),
        math.ceil(updates_per_s / UPDATES_PER_S_PER_WORKER),
        1,
    )
    return max(1, min(wanted, os.cpu_count() or 1, MAX_WORKERS))


# -- figures ----------------------------------------------------------------------------------


class Histogram:
    """Counts of values in milliseconds, in log-spaced bins about 1.2 % wide from
    :attr:`LOW_MS` to :attr:`HIGH_MS` (values outside go to the end bins), with the exact
    maximum; percentiles are read to a bin's width."""

    LOW_MS = 0.01
    HIGH_MS = 1e6
    PER_DECADE = 200

    def __init__(self) -> None:
        decades = math.log10(self.HIGH_MS / self.LOW_MS)
        self.counts = [0] * (round(decades * self.PER_DECADE) + 1)
        self.max_ms = 0.0

    def add(self, value_ms: float) -> None:
        if value_ms > self.max_ms:
            self.max_ms = value_ms
        if value_ms <= self.LOW_MS:
            index = 0
        else:
            index = int(math.log10(value_ms / self.LOW_MS) * self.PER_DECADE)
        self.counts[min(index, len(self.counts) - 1)] += 1

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.max_ms = max(self.max_ms, other.max_ms)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) in ms: the geometric middle of its bin, at most the
        maximum; ``None`` when empty."""
        total = self.count
        if not total:
            return None
        wanted = max(1, math.ceil(total * q / 100.0))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= wanted:
                middle = self.LOW_MS * 10 ** ((index + 0.5) / self.PER_DECADE)
                return min(middle, self.max_ms)
        return self.max_ms  # pragma: no cover -- the counts add up to total


@dataclass
class StreamOutcome:
    """One pushed stream, as its pusher saw it; ``generation``: how many streams its slot had
    before it. Times in seconds."""

    slot: int
    generation: int = 0
    stream_id: str = ""
    seconds_sent: float = 0.0
    ended: bool = False
    windows_computed: int = 0
    windows_skipped: int = 0
    reason: str = ""
    #: Most seconds a frame went out after its due time (the pusher falling behind).
    max_send_lag_s: float = 0.0


@dataclass
class SubscriberOutcome:
    """One ``/ws/updates`` subscriber. ``slot``: the stream slot it follows (``None``: all);
    ``followed``: the ids of that slot's streams it subscribed to, in order."""

    index: int
    slot: int | None
    followed: list[str] = field(default_factory=list)
    updates_by_stream: dict[str, int] = field(default_factory=dict)
    #: ``windows_computed`` of each ``stream.ended`` it received.
    ended: dict[str, int] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    dropped: bool = False
    close: str = ""
    out_of_order: int = 0
    seq_gaps: int = 0
    resume_gaps: int = 0


@dataclass
class WorkerSpec:
    """One client worker's share of the soak: its stream ``slots`` and its ``subscribers``
    (``(index, slot)``, slot ``None``: all streams) out of ``streams`` and ``subscriber_count`` in
    all. ``url``: the server's ``ws://host:port``; times in seconds."""

    index: int
    url: str
    token: str | None
    streams: int
    subscriber_count: int
    duration_s: float
    ramp_s: float
    churn_s: float = 0.0
    slots: list[int] = field(default_factory=list)
    subscribers: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class WorkerResult:
    """What a worker saw; latencies as :class:`Histogram` counts."""

    index: int
    streams: list[StreamOutcome]
    subscribers: list[SubscriberOutcome]
    server_latency: Histogram
    client_delay: Histogram
    loop_lag: Histogram
    cpu_s: float
    wall_s: float
    errors: list[str]


@dataclass
class RssSample:
    """``t_s``: seconds since the streams began (negative: before); ``rss_mb``: MiB."""

    t_s: float
    rss_mb: float


@dataclass
class SoakResult:
    """Everything a soak measured; :meth:`to_json` is the report."""

    options: SoakOptions
    workers: int
    server_pid: int
    server_exit: int | None
    model: str
    device: str
    window_s: float
    hop_s: float
    duration_s: float
    warmup_s: float
    idle_rss_mb: float | None
    rss: list[RssSample]
    server_cpu_s: float
    worker_results: list[WorkerResult]
    log_warnings: int
    log_errors: int
    log_tracebacks: int
    #: The first error lines of the server's log (a traceback by its last line).
    log_error_lines: list[str]
    errors: list[str]

    # -- the accounting ---------------------------------------------------------------

    def _computed(self) -> dict[str, int]:
        """``windows_computed`` of every stream that ended, as its pusher or any subscriber saw."""
        computed: dict[str, int] = {}
        for w in self.worker_results:
            for sub in w.subscribers:
                computed.update(sub.ended)
        for w in self.worker_results:
            for s in w.streams:
                if s.ended:
                    computed[s.stream_id] = s.windows_computed
        return computed

    def _streams(self) -> list[StreamOutcome]:
        return [s for w in self.worker_results for s in w.streams]

    def _subscribers(self) -> list[SubscriberOutcome]:
        return [s for w in self.worker_results for s in w.subscribers]

    def deliveries(self) -> dict[str, int]:
        """Updates expected by and delivered to subscribers, lost and extra (received beyond what
        was published), with the subscribers dropped and those that lost any."""
        computed = self._computed()
        expected = delivered = lost = extra = losers = 0
        for sub in self._subscribers():
            if sub.slot is None:
                followed = list(computed)
            else:
                followed = [sid for sid in sub.followed if sid in computed]
            want = sum(computed[s] for s in followed)
            got = sum(sub.updates_by_stream.get(s, 0) for s in followed)
            expected += want
            delivered += min(got, want)
            lost += max(0, want - got)
            extra += max(0, got - want)
            losers += got < want
        subs = self._subscribers()
        return {
            "published": sum(computed.values()),
            "expected": expected,
            "delivered": delivered,
            "lost": lost,
            "extra": extra,
            "subscribers_dropped": sum(s.dropped for s in subs),
            "subscribers_with_loss": losers,
            "out_of_order": sum(s.out_of_order for s in subs),
            "seq_gaps": sum(s.seq_gaps for s in subs),
            "resume_gaps": sum(s.resume_gaps for s in subs),
        }

    def all_errors(self) -> list[str]:
        """Every problem found, streams and subscribers included (the server's log by counts)."""
        errors = list(self.errors)
        for w in self.worker_results:
            errors += w.errors
        computed = self._computed()
        for s in self._streams():
            if s.stream_id and s.stream_id not in computed:
                errors.append(f"stream {s.slot} ({s.stream_id}): no stream.ended")
        if self.log_errors or self.log_tracebacks:
            errors.append(
                f"the server logged {self.log_errors} errors and {self.log_tracebacks} tracebacks"
            )
            errors += [f"server log: {line}" for line in self.log_error_lines]
        if self.server_exit is None:
            errors.append(f"the server did not stop within {STOP_TIMEOUT_S:g} s of SIGINT")
        elif self.server_exit not in CLEAN_EXITS:
            errors.append(f"the server exited with status {self.server_exit}")
        return errors

    def rss_figures(self) -> dict[str, float | int | None]:
        """Server RSS in MiB: idle (before the streams), at the end of the warm-up and at the end
        of the streams, the maximum, and after every stream ended; growth over the streams after
        the warm-up in MiB and MiB per hour (least-squares slope over ``fit_s`` seconds)."""
        soak_s = self.options.minutes * 60.0
        during = [s for s in self.rss if 0.0 <= s.t_s <= soak_s]
        steady = [s for s in during if s.t_s >= self.warmup_s] or during[-1:]
        after = [s for s in self.rss if s.t_s > soak_s]
        first, last = (steady[0], steady[-1]) if steady else (None, None)
        mbs = [s.rss_mb for s in self.rss]
        if self.idle_rss_mb is not None:
            mbs.append(self.idle_rss_mb)
        figures: dict[str, float | int | None] = {
            "idle_mb": _round(self.idle_rss_mb),
            "start_mb": None if first is None else _round(first.rss_mb),
            "end_mb": None if last is None else _round(last.rss_mb),
            "max_mb": _round(max(mbs)) if mbs else None,
            "after_mb": _round(after[-1].rss_mb) if after else None,
            "growth_mb": None,
            "growth_mb_per_hour": None,
            "fit_s": None,
            "samples": len(self.rss),
            "warmup_s": _round(self.warmup_s),
        }
        if first is not None and last is not None and last.t_s > first.t_s:
            t = np.array([s.t_s for s in steady])
            mb = np.array([s.rss_mb for s in steady])
            slope = float(np.polyfit(t, mb, 1)[0])
            figures["growth_mb"] = _round(last.rss_mb - first.rss_mb)
            figures["growth_mb_per_hour"] = _round(slope * 3600.0)
            figures["fit_s"] = _round(last.t_s - first.t_s)
        return figures

    def to_json(self) -> dict[str, Any]:
        server_latency, client_delay, loop_lag = Histogram(), Histogram(), Histogram()
        for w in self.worker_results:
            server_latency.merge(w.server_latency)
            client_delay.merge(w.client_delay)
            loop_lag.merge(w.loop_lag)
        streams = self._streams()
        wall = max(self.duration_s, 1e-9)
        errors = self.all_errors()
        deliveries = self.deliveries()
        return {
            "streams": self.options.streams,
            "subscribers": self.options.subscribers,
            "follow": self.options.follow,
            "churn_s": self.options.churn_s,
            "minutes": self.options.minutes,
            "duration_s": _round(self.duration_s),
            "model": self.model,
            "device": self.device,
            "window_s": self.window_s,
            "hop_s": self.hop_s,
            "workers": self.workers,
            "server": {
                "pid": self.server_pid,
                "exit_status": self.server_exit,
                "stopped_cleanly": self.server_exit in CLEAN_EXITS,
                "cpu_percent": _round(100.0 * self.server_cpu_s / wall),
                "log_warnings": self.log_warnings,
                "log_errors": self.log_errors,
                "log_tracebacks": self.log_tracebacks,
            },
            "rss": self.rss_figures(),
            "updates": deliveries,
            "windows": {
                "streams_started": sum(bool(s.stream_id) for s in streams),
                "streams_ended": sum(s.ended for s in streams),
                "computed": sum(s.windows_computed for s in streams),
                "skipped": sum(s.windows_skipped for s in streams),
                "audio_s": _round(sum(s.seconds_sent for s in streams)),
            },
            "latency_ms": {
                "server_p50": _round(server_latency.percentile(50)),
                "server_p99": _round(server_latency.percentile(99)),
                "server_max": _round(server_latency.max_ms),
                "client_p50": _round(client_delay.percentile(50)),
                "client_p99": _round(client_delay.percentile(99)),
                "client_max": _round(client_delay.max_ms),
                "updates": server_latency.count,
                "client_updates": client_delay.count,
            },
            "clients": {
                "cpu_percent": [
                    _round(100.0 * w.cpu_s / max(w.wall_s, 1e-9)) for w in self.worker_results
                ],
                "loop_lag_ms_p99": _round(loop_lag.percentile(99)),
                "loop_lag_ms_max": _round(loop_lag.max_ms),
                "send_lag_s_max": _round(max((s.max_send_lag_s for s in streams), default=0.0)),
            },
            "errors": {"count": len(errors), "first": errors[:20]},
            "ok": not errors and deliveries["lost"] == 0 and deliveries["extra"] == 0,
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _ms(value: object) -> str:
    return "-" if value is None else f"{value:g} ms"


def _mib(value: object) -> str:
    return "-" if value is None else f"{value:g} MiB"


def format_report(report: dict[str, Any]) -> str:
    """A few lines for a person, from :meth:`SoakResult.to_json`."""
    rss, up, win, lat = report["rss"], report["updates"], report["windows"], report["latency_ms"]
    srv, cli = report["server"], report["clients"]
    follow = "every stream each" if report["follow"] == "all" else "one stream each"
    growth = rss["growth_mb_per_hour"]
    churn = report.get("churn_s") or 0
    churning = f", each slot a new stream every ~{churn:g} s" if churn else ""
    lines = [
        f"soak: {report['streams']} streams, {report['subscribers']} subscribers ({follow}"
        f"{churning}), {report['duration_s']:g} s; model {report['model']} on "
        f"{report['device']}, {report['workers']} client process(es)",
        f"server RSS: {_mib(rss['idle_mb'])} idle, {_mib(rss['start_mb'])} after the "
        f"{rss['warmup_s']:g} s warm-up, {_mib(rss['end_mb'])} at the end of the streams, "
        f"{_mib(rss['after_mb'])} after them, max {_mib(rss['max_mb'])}",
        f"server RSS growth: {_mib(rss['growth_mb'])} over {rss['fit_s'] or 0:g} s, "
        f"{'-' if growth is None else f'{growth:+g}'} MiB/h ({rss['samples']} samples"
        + ("; too short a run to extrapolate)" if (rss["fit_s"] or 0) < SHORT_FIT_S else ")"),
        f"updates: {up['published']} published, {up['expected']} expected by subscribers, "
        f"{up['delivered']} delivered, {up['lost']} lost; {up['subscribers_dropped']} "
        f"subscribers dropped, {up['out_of_order']} out of order",
        f"windows: {win['computed']} computed, {win['skipped']} skipped "
        f"({win['streams_ended']} of {win['streams_started']} streams ended)",
        f"latency (server): p50 {_ms(lat['server_p50'])}, p99 {_ms(lat['server_p99'])}, "
        f"max {_ms(lat['server_max'])}; client-side delay: p50 {_ms(lat['client_p50'])}, "
        f"p99 {_ms(lat['client_p99'])}, max {_ms(lat['client_max'])}",
        f"cpu (of one core): server {srv['cpu_percent']} %, clients "
        f"{', '.join(f'{c:g} %' for c in cli['cpu_percent'])}; client loop lag p99 "
        f"{_ms(cli['loop_lag_ms_p99'])}, max {_ms(cli['loop_lag_ms_max'])}",
    ]
    errors = report["errors"]
    if errors["count"]:
        lines.append(f"errors: {errors['count']}")
        lines += [f"  {e}" for e in errors["first"]]
    else:
        lines.append("errors: none")
    return "\n".join(lines)


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


def _worker_main(conn: Connection) -> None:
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


# -- the soak process --------------------------------------------------------------------------


def soak_config(config: Config, options: SoakOptions, database: Path) -> Config:
    """``config`` as the soak's server runs it: on ``options.host``, a free port, room for every
    stream from one address, warnings and errors only in its log, ``database`` for storage."""
    server = dataclasses.replace(
        config.server,
        host=options.host,
        port=0,
        log_level="warning",
        insecure=False,
        max_streams=max(config.server.max_streams, options.streams),
        max_streams_per_client=max(config.server.max_streams_per_client, options.streams),
    )
    storage = dataclasses.replace(config.storage, database=str(database))
    return config.replace(server=server, storage=storage)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # inf and nan are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")  # pragma: no cover -- Config holds no other type


def config_toml(config: Config) -> str:
    """``config`` as TOML that :func:`~stream_server.config.load_config` reads back equal."""
    lines: list[str] = []
    for table, values in dataclasses.asdict(config).items():
        lines.append(f"[{table}]")
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if k not in nested]
        for key, sub in nested.items():
            lines.append(f"[{table}.{key}]")
            lines += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in sub.items()]
    text = "\n".join(lines) + "\n"
    if config_from_dict(tomllib.loads(text)) != config:  # pragma: no cover -- a bug here
        raise SoakError("the soak's config does not read back as written")
    return text


def _raise_file_limit(needed: int) -> None:
    """Raise this process's soft limit on open files to ``needed`` (the server and the workers
    inherit it); :class:`SoakError` when the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SoakError(
                f"the soak needs {needed} open files but the limit is {hard} (ulimit -Hn): "
                "fewer streams and subscribers, or a higher limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _rss_mb(pid: int) -> float | None:
    """``VmRSS`` of process ``pid`` in MiB; ``None`` once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


def _cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` (``/proc/PID/stat``); ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command name: state is field 3 of the whole line, utime 14 and stime 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _ServerProcess:
    """``genrecast serve --config PATH`` as a child process, with its log read by a thread:
    ``WARNING``/``ERROR`` lines and tracebacks counted after it is ready, the first
    :attr:`KEPT` error lines kept (a traceback's: its last line), the last lines kept."""

    KEPT = 10

    LEVEL = re.compile(r"^(WARNING|ERROR|CRITICAL)\b")

    def __init__(self, config_path: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream_server.tools.cli",
                "serve",
                "--config",
                str(config_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
        )
        self.port: int | None = None
        self.ready = threading.Event()
        self.tail: deque[str] = deque(maxlen=20)
        self.warnings = self.errors = self.tracebacks = 0
        self.error_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="soak-server-log", daemon=True)
        self._reader.start()

    def _keep(self, line: str) -> None:
        if len(self.error_lines) < self.KEPT:
            self.error_lines.append(line)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        in_traceback = False
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            if self.port is None:
                match = re.search(r"ready on http://\S+:(\d+)", line)
                if match:
                    self.port = int(match.group(1))
                    self.ready.set()
                continue
            level = self.LEVEL.match(line)
            if in_traceback and not line.startswith(" "):
                in_traceback = False
                self._keep(line)
            elif level and level.group(1) == "WARNING":
                self.warnings += 1
            elif level:
                self.errors += 1
                self._keep(line)
            if line.startswith("Traceback"):
                self.tracebacks += 1
                in_traceback = True
        self.ready.set()  # it exited: nobody waits any more

    def wait_ready(self, timeout_s: float) -> int:
        """The port once the server says it is ready; :class:`SoakError` if it exits or takes
        longer than ``timeout_s``."""
        self.ready.wait(timeout_s)
        if self.port is None:
            last = "\n".join(self.tail)
            status = self.proc.poll()
            why = f"exited with status {status}" if status is not None else "is not ready"
            raise SoakError(f"the server {why} after {timeout_s:g} s at most:\n{last}")
        return self.port

    def stop(self) -> int | None:
        """SIGINT, then SIGKILL after :data:`STOP_TIMEOUT_S`; the exit status (``None``: it had
        to be killed)."""
        status = self.proc.poll()
        if status is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                status = self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                status = None
        self._reader.join(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return status


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _read_ready(host: str, port: int) -> dict[str, Any]:
    url = f"http://{_url_host(host)}:{port}/ready"
    try:
        answer: dict[str, Any] = httpx.get(url, trust_env=False, timeout=10.0).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise SoakError(f"the server's /ready did not answer: {exc}") from None
    if not answer.get("ready"):
        raise SoakError(f"the server is not ready: {answer.get('error')}")
    return answer


def schedule(duration_s: float, buffer_s: float, window_s: float) -> tuple[float, float]:
    """``(ramp_s, warmup_s)`` of a soak of ``duration_s`` seconds: the streams start spread over
    the first tenth (at most 10 s); the warm-up lasts until every stream's ring buffer
    (``buffer_s`` of audio) is full and its first window done, and at least 60 s, but at most
    half the soak."""
    ramp_s = min(10.0, duration_s / 10.0)
    return ramp_s, min(duration_s / 2.0, max(60.0, ramp_s + buffer_s + window_s))


def _plan(
    options: SoakOptions, workers: int, url: str, token: str | None, ramp_s: float
) -> list[WorkerSpec]:
    """Each worker's streams and subscribers: stream slot ``i`` on worker ``i mod workers``, a
    subscriber on the worker of the stream it follows (round robin when it follows all)."""
    duration_s = options.minutes * 60.0
    specs = [
        WorkerSpec(
            w, url, token, options.streams, options.subscribers, duration_s, ramp_s, options.churn_s
        )
        for w in range(workers)
    ]
    for slot in range(options.streams):
        specs[slot % workers].slots.append(slot)
    for j in range(options.subscribers):
        if options.follow == "all":
            specs[j % workers].subscribers.append((j, None))
        else:
            slot = j % options.streams
            specs[slot % workers].subscribers.append((j, slot))
    return specs


def run_soak(options: SoakOptions, *, log: TextIO | None = None) -> SoakResult:
    """Run a soak (see the module docstring) and return what it measured. ``log``: a text
    stream for progress lines (``None``: none).

    Raises:
        SoakError: the options are out of bounds, or the server or the workers did not start.
        ConfigError: the config is invalid.
    """
    options.check()
    config = load_config(options.config).overridden(model=options.model, device=options.device)
    _raise_file_limit(options.streams + options.subscribers + 512)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if options.token is not None:
        env[TOKEN_ENV] = options.token
    token = options.token

    def say(text: str) -> None:
        if log is not None:
            print(f"soak: {text}", file=log, flush=True)

    with tempfile.TemporaryDirectory(prefix="genrecast-soak-") as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(config_toml(soak_config(config, options, Path(tmp) / "soak.db")), "utf-8")
        server = _ServerProcess(path, env)
        server_exit: int | None = None
        try:
            port = server.wait_ready(READY_TIMEOUT_S)
            ready = _read_ready(options.host, port)
            hop_s, window_s = float(ready["hop_s"]), float(ready["window_s"])
            workers = options.workers or auto_workers(
                options.streams, options.subscribers, options.follow, hop_s
            )
            url = f"ws://{_url_host(options.host)}:{port}"
            say(
                f"server pid {server.proc.pid} ready on port {port} ({ready['model']} on "
                f"{ready['device']}); {workers} client process(es)"
            )
            ramp_s, warmup_s = schedule(options.minutes * 60.0, config.engine.buffer_s, window_s)
            specs = _plan(options, workers, url, token, ramp_s)
            result = _drive(options, server, specs, warmup_s, say)
            result.model, result.device = str(ready["model"]), str(ready["device"])
            result.window_s, result.hop_s = window_s, hop_s
        finally:
            server_exit = server.stop()
        result.server_exit = server_exit
        result.log_warnings, result.log_errors = server.warnings, server.errors
        result.log_tracebacks, result.log_error_lines = server.tracebacks, server.error_lines
        return result


def _drive(
    options: SoakOptions,
    server: _ServerProcess,
    specs: list[WorkerSpec],
    warmup_s: float,
    say: Callable[[str], None],
) -> SoakResult:
    """Start the workers, sample the server while they run, collect what they saw."""
    pid = server.proc.pid
    duration_s = options.minutes * 60.0
    every_s = min(5.0, max(0.5, duration_s / 60.0))
    context = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    conns: list[Connection] = []
    errors: list[str] = []
    results: dict[int, WorkerResult] = {}
    rss: list[RssSample] = []
    try:
        for spec in specs:
            ours, theirs = context.Pipe()
            proc = context.Process(target=_worker_main, args=(theirs,), daemon=True)
            proc.start()
            theirs.close()
            ours.send(spec)
            procs.append(proc)
            conns.append(ours)
        deadline = time.monotonic() + WORKER_START_S
        for conn in conns:
            answer: object = f"it did not start within {WORKER_START_S:g} s"
            with contextlib.suppress(EOFError, OSError):
                if conn.poll(max(0.0, deadline - time.monotonic())):
                    answer = conn.recv()
            if answer != "ready":
                raise SoakError(f"a client process failed: {answer}")
        idle = _rss_mb(pid)
        start_wall = time.time() + 0.5
        for conn in conns:
            conn.send(start_wall)
        cpu0 = _cpu_s(pid) or 0.0
        say(
            f"running {options.streams} streams and {options.subscribers} subscribers "
            f"for {duration_s:g} s"
        )
        hard_end = time.monotonic() + 0.5 + duration_s + 2 * END_GRACE_S + 60.0
        next_sample = time.monotonic() + 0.5
        next_say = time.monotonic() + 0.5 + max(60.0, duration_s / 10.0)
        pending = {conn: i for i, conn in enumerate(conns)}
        cpu1 = cpu0
        while pending and time.monotonic() < hard_end:
            now = time.monotonic()
            if now >= next_sample:
                value = _rss_mb(pid)
                if value is not None:
                    rss.append(RssSample(time.time() - start_wall, value))
                    cpu1 = _cpu_s(pid) or cpu1
                next_sample += every_s
            if now >= next_say and rss:
                say(f"{rss[-1].t_s:.0f} s: server RSS {rss[-1].rss_mb:.1f} MiB")
                next_say += max(60.0, duration_s / 10.0)
            ready_conns = wait_connections(list(pending), timeout=max(0.0, next_sample - now))
            for ready in ready_conns:
                assert isinstance(ready, Connection)
                index = pending.pop(ready)
                try:
                    answer = ready.recv()
                except (EOFError, OSError):
                    answer = f"client process {index} died (exit status {procs[index].exitcode})"
                if isinstance(answer, WorkerResult):
                    results[index] = answer
                else:
                    errors.append(str(answer))
        if pending:
            errors.append(f"{len(pending)} client process(es) did not finish in time")
        end_wall = time.time()
        cpu_end = _cpu_s(pid)
        final = _rss_mb(pid)
        if final is not None:
            rss.append(RssSample(end_wall - start_wall, final))
        if server.proc.poll() is not None:
            errors.append(f"the server exited during the soak (status {server.proc.returncode})")
    finally:
        for worker in procs:
            worker.join(5.0)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        for conn in conns:
            conn.close()
    return SoakResult(
        options=options,
        workers=len(specs),
        server_pid=pid,
        server_exit=None,
        model="",
        device="",
        window_s=0.0,
        hop_s=0.0,
        duration_s=end_wall - start_wall,
        warmup_s=warmup_s,
        idle_rss_mb=idle,
        rss=rss,
        server_cpu_s=(cpu_end if cpu_end is not None else cpu1) - cpu0,
        worker_results=[results[i] for i in sorted(results)],
        log_warnings=0,
        log_errors=0,
        log_tracebacks=0,
        log_error_lines=[],
        errors=errors,
    )
