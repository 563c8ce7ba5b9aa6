"""What a soak measured: latency histograms, each stream's and subscriber's outcome, the
accounting of lost updates, RSS figures and the report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_server.tools.soak.options import (
    CLEAN_EXITS,
    SHORT_FIT_S,
    STOP_TIMEOUT_S,
    SoakOptions,
)


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
    #: The server's processes taking connections (``server.workers`` of the config it ran).
    server_workers: int = 1

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
                "workers": self.server_workers,
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
