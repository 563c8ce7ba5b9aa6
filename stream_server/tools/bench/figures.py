"""What a bench measured, computed from what its load processes recorded: no I/O here.

The latency join: a pusher records, for each frame of a stream, how many samples of the stream
had been sent once the frame was out (cumulative) and the ``time.monotonic()`` just after it was
handed to the socket. The subscriber records, for each ``genre.update``, its ``stream_time_s``
(the end of its window in stream time) and the ``time.monotonic()`` it was received. The window
ends at sample ``S`` of the stream (:func:`window_end_samples`); the frame that carried sample
``S`` is the first whose cumulative count reaches ``S``; the update's latency is its receipt
minus that frame's send time (:func:`join_latencies_ms`). ``time.monotonic()`` is one clock for
every process of a Linux machine, so the two can be subtracted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Geometry:
    """A stream's windows: ``sample_rate`` in Hz; a window of ``window_samples`` ends every
    ``hop_samples`` samples once the first is full (as the server's sessions cut them)."""

    sample_rate: int
    window_samples: int
    hop_samples: int

    @staticmethod
    def of(sample_rate: int, window_s: float, hop_s: float) -> Geometry:
        """The geometry of windows of ``window_s`` seconds every ``hop_s`` seconds."""
        return Geometry(sample_rate, round(window_s * sample_rate), round(hop_s * sample_rate))

    @property
    def hop_s(self) -> float:
        return self.hop_samples / self.sample_rate


@dataclass
class StreamLog:
    """What a pusher saw of one stream (``index``: its number in the run).

    ``sent_samples[k]``: samples of the stream sent once frame ``k`` was out (cumulative,
    increasing); ``sent_times[k]``: ``time.monotonic()`` seconds just after frame ``k`` went to the
    socket. ``ended_at``: ``time.monotonic()`` seconds when its ``stream.ended`` arrived (0: it did
    not); ``max_lag_s``: the most seconds a frame went out after its due time (the pusher falling
    behind); ``error``: why the stream failed ("" when it did not).
    """

    index: int
    stream_id: str = ""
    sent_samples: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sent_times: FloatArray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    ended: bool = False
    windows_computed: int = 0
    windows_skipped: int = 0
    ended_at: float = 0.0
    max_lag_s: float = 0.0
    error: str = ""


@dataclass
class UpdateLog:
    """The ``genre.update`` messages of one stream as the subscriber got them, in order:
    ``stream_time_s`` (end of the window, seconds of stream time), ``received``
    (``time.monotonic()`` seconds) and the ``latency_ms`` the server measured (from the arrival
    of the window's last sample to the update being sent, milliseconds)."""

    stream_time_s: FloatArray
    received: FloatArray
    server_latency_ms: FloatArray


def window_end_samples(stream_time_s: npt.ArrayLike, geometry: Geometry) -> IntArray:
    """The sample each window ends at (exclusive: the window's last sample is number ``S``,
    counting from 1), from the ``stream_time_s`` of its update.

    ``stream_time_s`` is rounded to the millisecond in the message, so ``t * rate`` is off by up
    to half a millisecond of samples; a window always ends at ``window + j * hop`` (a pushed
    stream has no gaps), and the nearest such sample is exact.
    """
    t = np.asarray(stream_time_s, dtype=np.float64)
    hops = np.rint((t * geometry.sample_rate - geometry.window_samples) / geometry.hop_samples)
    return (geometry.window_samples + np.maximum(hops, 0) * geometry.hop_samples).astype(np.int64)


def join_latencies_ms(
    sent_samples: IntArray, sent_times: FloatArray, end_samples: IntArray, received: FloatArray
) -> FloatArray:
    """Milliseconds from the send of each window's last sample to the receipt of its update.

    ``sent_samples``/``sent_times``: a :class:`StreamLog`'s frames; ``end_samples``: where each
    update's window ends (:func:`window_end_samples`); ``received``: when each update arrived
    (``time.monotonic()`` seconds). NaN for a window whose last sample was never recorded as sent.
    """
    ends = np.asarray(end_samples, dtype=np.int64)
    frames = np.searchsorted(np.asarray(sent_samples), ends, side="left")
    out = np.full(ends.shape, np.nan, dtype=np.float64)
    known = (frames < len(sent_samples)) & (ends > 0)
    out[known] = (np.asarray(received)[known] - np.asarray(sent_times)[frames[known]]) * 1000.0
    return out


def stream_latencies_ms(log: StreamLog, updates: UpdateLog, geometry: Geometry) -> FloatArray:
    """:func:`join_latencies_ms` of one stream's frames and updates."""
    ends = window_end_samples(updates.stream_time_s, geometry)
    return join_latencies_ms(log.sent_samples, log.sent_times, ends, updates.received)


def percentile(values: FloatArray, q: float) -> float | None:
    """The ``q``-th percentile (0-100) of the finite ``values``; ``None`` when there are none."""
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, q)) if finite.size else None


@dataclass(frozen=True)
class Throughput:
    """``windows`` scored in ``seconds`` of wall time."""

    windows: int
    seconds: float

    @property
    def per_s(self) -> float:
        """Windows per second (0 when nothing was timed)."""
        return self.windows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunFigures:
    """One load run: ``streams`` streams of ``seconds`` seconds of audio at ``speed`` times
    real time.

    ``wall_s``: seconds from the start to the last ``stream.ended`` (less a hold);
    ``latencies_ms`` and ``server_latencies_ms``: one per update joined (NaN: not joined);
    ``unmatched``: updates of streams no pusher recorded; ``server_cpu_s``: the server's user
    plus system CPU seconds over the run; RSS in MiB (``server_rss_before_mb`` before the
    streams opened, ``idle_rss_mb`` near the end of a ``--hold``, ``None`` without one);
    ``client_cpu_s``: CPU seconds of the load processes; ``max_send_lag_ms``: the most a frame
    went out late."""

    streams: int
    seconds: float
    speed: float
    hop_s: float
    wall_s: float
    windows_computed: int
    skipped: int
    streams_ended: int
    latencies_ms: FloatArray
    server_latencies_ms: FloatArray
    unmatched: int
    server_cpu_s: float
    server_rss_mb: float | None
    server_rss_peak_mb: float | None
    client_cpu_s: float
    max_send_lag_ms: float
    errors: list[str]
    server_rss_before_mb: float | None = None
    idle_rss_mb: float | None = None

    @property
    def idle_rss_mb_per_100_streams(self) -> float | None:
        """The server's RSS growth per 100 idle-but-live streams (``--hold``), MiB."""
        if self.idle_rss_mb is None or self.server_rss_before_mb is None:
            return None
        return (self.idle_rss_mb - self.server_rss_before_mb) * 100.0 / self.streams

    @property
    def e2e_windows_per_s(self) -> float:
        """Windows the server computed per second of wall time."""
        return self.windows_computed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def offered_windows_per_s(self) -> float:
        """Windows the streams made due per second: each stream one per hop of its audio."""
        return self.streams * self.speed / self.hop_s

    def p99_ms(self) -> float | None:
        return percentile(self.latencies_ms, 99)

    def passes(self, max_p99_ms: float) -> bool:
        """Whether the run kept up: every stream ended, windows computed, none skipped, no
        error, and the p99 latency at most ``max_p99_ms`` milliseconds."""
        p99 = self.p99_ms()
        return (
            not self.errors
            and self.streams_ended == self.streams
            and self.windows_computed > 0
            and self.skipped == 0
            and p99 is not None
            and p99 <= max_p99_ms
        )

    def to_json(self, offline_windows_per_s: float | None) -> dict[str, Any]:
        """The run's figures; ``e2e_fraction_of_offline`` against ``offline_windows_per_s``."""
        e2e = self.e2e_windows_per_s
        joined = int(np.isfinite(self.latencies_ms).sum())
        return {
            "streams": self.streams,
            "seconds": self.seconds,
            "speed": self.speed,
            "wall_s": _round(self.wall_s, 2),
            "windows_computed": self.windows_computed,
            "skipped": self.skipped,
            "streams_ended": self.streams_ended,
            "offered_windows_per_s": _round(self.offered_windows_per_s, 2),
            "e2e_windows_per_s": _round(e2e, 2),
            "e2e_fraction_of_offline": (
                _round(e2e / offline_windows_per_s, 3) if offline_windows_per_s else None
            ),
            "latency_ms_p50": _round(percentile(self.latencies_ms, 50), 1),
            "latency_ms_p99": _round(self.p99_ms(), 1),
            "latency_ms_max": _round(percentile(self.latencies_ms, 100), 1),
            "latency_updates": joined,
            "latency_unjoined": int(self.latencies_ms.size - joined) + self.unmatched,
            "server_latency_ms_p50": _round(percentile(self.server_latencies_ms, 50), 1),
            "server_latency_ms_p99": _round(percentile(self.server_latencies_ms, 99), 1),
            "server_cpu_s": _round(self.server_cpu_s, 2),
            "server_rss_mb": _round(self.server_rss_mb, 1),
            "server_rss_peak_mb": _round(self.server_rss_peak_mb, 1),
            "server_rss_before_mb": _round(self.server_rss_before_mb, 1),
            "idle_rss_mb": _round(self.idle_rss_mb, 1),
            "idle_rss_mb_per_100_streams": _round(self.idle_rss_mb_per_100_streams, 1),
            "client_cpu_s": _round(self.client_cpu_s, 2),
            "max_send_lag_ms": _round(self.max_send_lag_ms, 1),
            "errors": list(self.errors),
        }


def summarise(
    logs: list[StreamLog],
    updates: dict[str, UpdateLog],
    geometry: Geometry,
    *,
    streams: int,
    seconds: float,
    speed: float,
    start: float,
    end: float,
    server_cpu_s: float,
    server_rss_mb: float | None,
    server_rss_peak_mb: float | None,
    client_cpu_s: float,
    errors: list[str],
    server_rss_before_mb: float | None = None,
    idle_rss_mb: float | None = None,
    hold_s: float = 0.0,
) -> RunFigures:
    """The figures of a run of ``streams`` streams from its pushers' ``logs`` (a stream of a
    pusher that failed has none) and the subscriber's ``updates`` (by stream id). ``start``:
    ``time.monotonic()`` of the run's start; ``end``: when it ended if no ``stream.ended`` says
    later; ``hold_s``: the silent hold before the streams stopped (not counted in ``wall_s``)."""
    by_id = {log.stream_id: log for log in logs if log.stream_id}
    latencies: list[FloatArray] = []
    server: list[FloatArray] = []
    unmatched = 0
    for stream_id, got in updates.items():
        log = by_id.get(stream_id)
        if log is None:
            unmatched += got.received.size
            continue
        latencies.append(stream_latencies_ms(log, got, geometry))
        server.append(got.server_latency_ms)
    ended = [log for log in logs if log.ended]
    last = max([log.ended_at for log in ended], default=end)
    return RunFigures(
        streams=streams,
        seconds=seconds,
        speed=speed,
        hop_s=geometry.hop_s,
        wall_s=max(0.0, last - start - hold_s),
        windows_computed=sum(log.windows_computed for log in ended),
        skipped=sum(log.windows_skipped for log in ended),
        streams_ended=len(ended),
        latencies_ms=_concat(latencies),
        server_latencies_ms=_concat(server),
        unmatched=unmatched,
        server_cpu_s=server_cpu_s,
        server_rss_mb=server_rss_mb,
        server_rss_peak_mb=server_rss_peak_mb,
        server_rss_before_mb=server_rss_before_mb,
        idle_rss_mb=idle_rss_mb,
        client_cpu_s=client_cpu_s,
        max_send_lag_ms=1000.0 * max([log.max_lag_s for log in logs], default=0.0),
        errors=errors + [f"stream {log.index}: {log.error}" for log in logs if log.error],
    )


def _concat(parts: list[FloatArray]) -> FloatArray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


@dataclass
class BenchReport:
    """Everything a bench measured; :meth:`to_json` is the report.

    ``offline``: the model alone in the bench's process (an ``InferenceRunner``, batches of
    ``max_batch``); ``seed``: the naive pipeline (one window per call, float32), when measured;
    ``run``: the load run; ``probes``/``max_streams``: the ``--find-max`` search instead;
    ``server_workers``: the server's ingest processes (``serve --workers``; its CPU and RSS
    figures add up every process).
    """

    model: str
    device: str
    precision: str
    sample_rate: int
    window_s: float
    hop_s: float
    max_batch: int
    audio: str
    procs: int
    server_workers: int
    same_instant: bool
    server_pid: int
    bench_pid: int
    offline: Throughput
    seed: Throughput | None = None
    run: RunFigures | None = None
    probes: list[RunFigures] = field(default_factory=list)
    max_streams: int | None = None
    max_p99_ms: float | None = None
    log_warnings: int = 0
    log_errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        offline = self.offline.per_s
        out: dict[str, Any] = {
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "sample_rate": self.sample_rate,
            "window_s": self.window_s,
            "hop_s": self.hop_s,
            "max_batch": self.max_batch,
            "audio": self.audio,
            "procs": self.procs,
            "server_workers": self.server_workers,
            "same_instant": self.same_instant,
            "server_pid": self.server_pid,
            "bench_pid": self.bench_pid,
            "offline_windows_per_s": _round(offline, 2),
            "offline_windows": self.offline.windows,
        }
        if self.seed is not None:
            out["seed_windows_per_s"] = _round(self.seed.per_s, 3)
            out["seed_windows"] = self.seed.windows
        if self.run is not None:
            out.update(self.run.to_json(offline))
        if self.max_p99_ms is not None:
            out["find_max"] = {
                "max_p99_ms": self.max_p99_ms,
                "streams": self.max_streams,
                "probes": [
                    {**p.to_json(offline), "ok": p.passes(self.max_p99_ms)} for p in self.probes
                ],
            }
        out["server_log_warnings"] = self.log_warnings
        out["server_log_errors"] = list(self.log_errors)
        return out


def format_report(report: dict[str, Any]) -> str:
    """:meth:`BenchReport.to_json` as lines for a person."""
    lines = [
        f"model {report['model']} on {report['device']} ({report['precision']}), "
        f"batches of {report['max_batch']}, "
        f"windows of {report['window_s']:g} s every {report['hop_s']:g} s; audio: "
        f"{report['audio']}",
        f"offline (the model alone, in the bench's process): "
        f"{report['offline_windows_per_s']} windows/s",
    ]
    if "seed_windows_per_s" in report:
        lines.append(
            f"naive pipeline (one window per call, float32): {report['seed_windows_per_s']} "
            "windows/s"
        )
    if "e2e_windows_per_s" in report:
        lines += _run_lines(report, "")
    search = report.get("find_max")
    if search is not None:
        for probe in search["probes"]:
            lines.append(_probe_line(probe))
        lines.append(
            f"most real-time streams with p99 <= {search['max_p99_ms']:g} ms and none skipped: "
            f"{search['streams']}"
        )
    return "\n".join(lines)


def _run_lines(run: dict[str, Any], indent: str) -> list[str]:
    fraction = run["e2e_fraction_of_offline"]
    share = f" ({100 * fraction:.0f} % of offline)" if fraction is not None else ""
    lines = [
        f"{run['streams']} streams x {run['seconds']:g} s of audio at {run['speed']:g}x: "
        f"{run['windows_computed']} windows computed, {run['skipped']} skipped in "
        f"{run['wall_s']} s",
        f"end to end: {run['e2e_windows_per_s']} windows/s{share}; offered "
        f"{run['offered_windows_per_s']} windows/s",
        f"latency (last sample sent -> update received): p50 {run['latency_ms_p50']} ms, "
        f"p99 {run['latency_ms_p99']} ms, max {run['latency_ms_max']} ms over "
        f"{run['latency_updates']} updates (server's own: p50 {run['server_latency_ms_p50']} "
        f"ms, p99 {run['server_latency_ms_p99']} ms)",
        f"server: {run['server_cpu_s']} CPU s, RSS {run['server_rss_mb']} MiB at the end, "
        f"peak {run['server_rss_peak_mb']} MiB; load processes: {run['client_cpu_s']} CPU s, "
        f"frames at most {run['max_send_lag_ms']} ms late",
    ]
    if run.get("idle_rss_mb") is not None:
        lines.append(
            f"idle: RSS {run['idle_rss_mb']} MiB with every stream open and silent, "
            f"{run['server_rss_before_mb']} MiB before they opened: "
            f"{run['idle_rss_mb_per_100_streams']} MiB per 100 streams"
        )
    lines += [f"error: {e}" for e in run["errors"]]
    return [indent + line for line in lines]


def _probe_line(probe: dict[str, Any]) -> str:
    verdict = "ok" if probe["ok"] else "too many"
    return (
        f"probe {probe['streams']} streams: p99 {probe['latency_ms_p99']} ms, "
        f"{probe['skipped']} skipped, {len(probe['errors'])} errors: {verdict}"
    )
