"""Key figures from the server's Prometheus ``/metrics`` text (pure: text in, numbers out)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class MetricsSample:
    """Counters read at one moment.

    Attributes:
        wall_time: Unix seconds when the text was read.
        windows_computed: Windows run through the model since the server started.
        windows_skipped: Windows skipped since the server started.
        active_streams: Streams live now.
        subscribers: ``/ws/updates`` subscribers now.
        latency_buckets: Cumulative end-to-end latency histogram, upper bound in seconds to count.
    """

    wall_time: float
    windows_computed: float = 0.0
    windows_skipped: float = 0.0
    active_streams: float = 0.0
    subscribers: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyMetrics:
    """What the dashboard shows: ``windows_per_s`` per second, ``p99_latency_ms`` milliseconds
    (``None`` without data), the rest counts."""

    active_streams: int
    subscribers: int
    windows_computed: int
    windows_skipped: int
    windows_per_s: float | None
    p99_latency_ms: float | None


def parse_metrics(text: str, wall_time: float) -> MetricsSample:
    """Read the counters the dashboard needs; unknown or malformed lines are ignored.

    Raises:
        ValueError: the text is not Prometheus exposition format at all.
    """
    values: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "genrecast_latency_seconds_bucket":
                buckets[float(sample.labels.get("le", "nan"))] = float(sample.value)
            else:
                values[sample.name] = float(sample.value)
    return MetricsSample(
        wall_time=wall_time,
        windows_computed=values.get("genrecast_windows_computed_total", 0.0),
        windows_skipped=values.get("genrecast_windows_skipped_total", 0.0),
        active_streams=values.get("genrecast_active_streams", 0.0),
        subscribers=values.get("genrecast_subscribers", 0.0),
        latency_buckets={k: v for k, v in buckets.items() if not math.isnan(k)},
    )


def quantile_from_buckets(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile (``0..1``) of a cumulative histogram, interpolated within its bucket.

    Returns the bound's unit (seconds here), the largest finite bound when the quantile falls in
    the ``+Inf`` bucket, or ``None`` when the histogram is empty.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    target = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= target and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (target - below) / (count - below)
        lower, below = (bound if math.isfinite(bound) else lower), count
    return lower


def key_metrics(current: MetricsSample, previous: MetricsSample | None = None) -> KeyMetrics:
    """Rates and the p99 latency between ``previous`` and ``current`` (since the server started
    when there is no earlier sample or no window was computed between the two)."""
    rate: float | None = None
    buckets = current.latency_buckets
    if previous is not None and current.wall_time > previous.wall_time:
        done = current.windows_computed - previous.windows_computed
        if done >= 0:
            rate = done / (current.wall_time - previous.wall_time)
        recent = {
            b: c - previous.latency_buckets.get(b, 0.0) for b, c in current.latency_buckets.items()
        }
        if recent and max(recent.values()) > 0 and min(recent.values()) >= 0:
            buckets = recent
    p99 = quantile_from_buckets(buckets, 0.99)
    return KeyMetrics(
        active_streams=int(current.active_streams),
        subscribers=int(current.subscribers),
        windows_computed=int(current.windows_computed),
        windows_skipped=int(current.windows_skipped),
        windows_per_s=rate,
        p99_latency_ms=None if p99 is None else p99 * 1000.0,
    )
