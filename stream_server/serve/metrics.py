"""Prometheus metrics of one server instance, in a registry of its own (served at ``/metrics``);
:func:`merge_metrics` sums the metrics of several processes (``serve --workers N``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

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
        self.takeovers = Counter(
            "genrecast_takeovers",
            "Pulled stations this cluster node took over from a node that was gone",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_metrics(texts: Sequence[str]) -> bytes:
    """Several processes' Prometheus texts as one: every sample (same name and labels) summed
    over the processes (counters, histogram buckets and gauges alike: the gauges here are counts
    of streams and subscribers), the ``_created`` times the earliest."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in merged:
                    merged[key] = sample.value
                elif sample.name.endswith("_created"):
                    merged[key] = min(merged[key], sample.value)
                else:
                    merged[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)
