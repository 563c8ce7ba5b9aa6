"""Prometheus metrics of one server instance, in a registry of its own (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The server's counters, gauges and histograms (names start with ``genrecast_``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.windows_computed = Counter(
            "genrecast_windows_computed", "Windows run through the model", registry=r
        )
        self.windows_skipped = Counter(
            "genrecast_windows_skipped",
            "Due windows not computed because a newer one of the same stream was (latest wins)",
            registry=r,
        )
        self.batch_size = Histogram(
            "genrecast_batch_size", "Windows per model batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "genrecast_inference_seconds",
            "Seconds per model batch (features + model + copies)",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.latency_seconds = Histogram(
            "genrecast_latency_seconds",
            "Seconds from the arrival of a window's last sample to its update being sent",
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.active_streams = Gauge(
            "genrecast_active_streams", "Streams currently live", registry=r
        )
        self.subscribers = Gauge(
            "genrecast_subscribers", "Connected /ws/updates subscribers", registry=r
        )
        self.subscribers_dropped = Counter(
            "genrecast_subscribers_dropped", "Subscribers dropped for being too slow", registry=r
        )
        self.errors = Counter(
            "genrecast_errors", "Errors by kind", labelnames=("kind",), registry=r
        )
        self.ingest_bytes = Counter(
            "genrecast_ingest_bytes", "PCM bytes received from ingest clients", registry=r
        )
        self.buffer_overruns = Counter(
            "genrecast_buffer_overrun_samples",
            "Samples overwritten in ring buffers before they were read",
            registry=r,
        )
        self.uploads = Counter(
            "genrecast_uploads",
            "Files posted to /classify, by result: classified, cached (answered from the cache), "
            "refused (bad, too large or too long), failed (server-side error)",
            labelnames=("result",),
            registry=r,
        )
        self.upload_windows = Counter(
            "genrecast_upload_windows",
            "Windows of uploaded files run through the model",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
