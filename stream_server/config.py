"""One typed configuration, loaded once from ``config.toml`` and passed explicitly.

Each TOML table maps to a frozen dataclass; :class:`Config` holds one of each. Unknown keys,
wrong types and out-of-range values raise :class:`~stream_server.errors.ConfigError` naming the
key (``engine.max_batch``) and the bad value. A missing key takes the default written here, which
is also what the project's ``config.toml`` documents. A key's range check is attached to its
dataclass field (``metadata={CHECK: ...}``, read by :func:`field_checks`), so it goes wherever the
field goes.

Units are in the key names: ``*_s`` seconds, ``*_ms`` milliseconds, ``*_bytes`` bytes.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from stream_server.errors import ConfigError

#: The ``config.toml`` shipped at the project root (used when no path is given and it exists).
PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"

#: The decodings ``[offline] decoding`` may name (see :mod:`stream_server.core.decoding`), each with
#: the words reports use for it.
OFFLINE_DECODINGS: dict[str, str] = {
    "viterbi": "the whole file at once, looking ahead (Viterbi over the window probabilities); "
    "a live stream decodes causally",
    "live": "causal, as a live stream of the same audio shows it",
}

#: The key of a field's ``metadata`` that holds its range check: a function of the already
#: type-checked value returning an error text, or ``None`` when the value is in range.
CHECK = "check"

_Check = typing.Callable[[Any], str | None]


def _positive(v: Any) -> str | None:
    return None if 0 < v < math.inf else "must be a finite number > 0"


def _non_negative(v: Any) -> str | None:
    return None if 0 <= v < math.inf else "must be a finite number >= 0"


#: Shortest ``engine.feed_s`` (seconds): below it the calls would cost more than they save.
MIN_FEED_S = 0.05


def _feed(v: Any) -> str | None:
    ok = v == 0 or MIN_FEED_S <= v < math.inf
    return None if ok else f"must be 0 (off) or a finite number >= {MIN_FEED_S}"


#: The most ingest processes ``server.workers`` may ask for.
MAX_WORKERS = 64


def _workers(v: Any) -> str | None:
    return None if 1 <= v <= MAX_WORKERS else f"must be 1..{MAX_WORKERS}"


def _nats_urls(v: Any) -> str | None:
    bad = [url for url in v if not url.startswith(("nats://", "tls://"))]
    return f"expected nats://host:port addresses, not {bad[0]!r}" if bad else None


def _replicas(v: Any) -> str | None:
    return None if 0 <= v <= 5 else "expected 0 (as many as the servers, up to 3) to 5"


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port in 0..65535"


def _device(v: Any) -> str | None:
    ok = v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"


def _unit_interval(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def _level_dbfs(v: Any) -> str | None:
    return None if -math.inf < v <= 0 else "must be a finite level in dBFS <= 0"


def _decoding(v: Any) -> str | None:
    return None if v in OFFLINE_DECODINGS else f"must be one of {', '.join(OFFLINE_DECODINGS)}"


def _log_level(v: Any) -> str | None:
    levels = ("critical", "error", "warning", "info", "debug")
    return None if v in levels else f"must be one of {', '.join(levels)}"


def parse_host_entry(entry: str) -> tuple[str, int | None]:
    """A ``sources.allowed_hosts`` entry as ``(host, port)``; ``port`` ``None``: any port.

    ``"radio.lan"``, ``"radio.lan:8000"``, ``"192.168.1.20:8000"``, ``"[fd12::1]:8000"`` (an
    IPv6 address in brackets). The host comes back lower-case, an IPv6 address without brackets.

    Raises:
        ValueError: ``entry`` is not a host with an optional port in 1..65535.
    """
    bad = ValueError(f"{entry!r} is not a host or host:port")
    if not entry or any(c.isspace() or c in "/?#@\\" for c in entry):
        raise bad
    try:
        parts = urlsplit(f"//{entry}")
        port = parts.port
    except ValueError:
        raise bad from None
    host = parts.hostname
    if not host or port == 0 or (":" in host and not entry.startswith("[")):
        raise bad
    return host, port


def _host_list(v: Any) -> str | None:
    for entry in v:
        try:
            parse_host_entry(entry)
        except ValueError as exc:
            return str(exc)
    return None


def _origin_list(v: Any) -> str | None:
    for entry in v:
        parts = urlsplit(entry)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            return f"{entry!r} is not an origin like 'https://host:port'"
    return None


def field_checks(cls: type[Any]) -> dict[str, _Check]:
    """The range checks attached to the fields of the dataclass ``cls``, by field name."""
    return {f.name: f.metadata[CHECK] for f in dataclasses.fields(cls) if CHECK in f.metadata}


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP/WebSocket listener and the limits it enforces on clients.

    ``max_streams_per_client``: live streams one client address may hold at once;
    ``start_timeout_s``: seconds an ingest connection may take to send ``start``;
    ``idle_timeout_s``: seconds a pushed stream may send no audio before it is ended;
    ``insecure``: listen on a non-loopback ``host`` although no token is configured ([auth]);
    ``header_timeout_s``: seconds a connection may take to send a complete request head, from
    connecting and from the first byte of each further request on a kept-alive connection
    (:mod:`stream_server.serve.http_timeouts`);
    ``workers``: ingest processes (:mod:`stream_server.serve.workers`); 1: one process serves
    and runs the model;
    ``dashboard_port``: the port ``genrecast dashboard`` listens on (on this machine), which the
    landing page ``/`` links to when it answers; 0: no link.
    """

    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata={CHECK: _port})
    max_frame_bytes: int = field(default=1 << 20, metadata={CHECK: _positive})
    min_sample_rate: int = field(default=8000, metadata={CHECK: _positive})
    max_sample_rate: int = field(default=384_000, metadata={CHECK: _positive})
    max_channels: int = field(default=8, metadata={CHECK: _positive})
    max_streams: int = field(default=64, metadata={CHECK: _positive})
    max_streams_per_client: int = field(default=16, metadata={CHECK: _positive})
    start_timeout_s: float = field(default=5.0, metadata={CHECK: _positive})
    idle_timeout_s: float = field(default=30.0, metadata={CHECK: _positive})
    log_level: str = field(default="info", metadata={CHECK: _log_level})
    insecure: bool = False
    header_timeout_s: float = field(default=10.0, metadata={CHECK: _positive})
    workers: int = field(default=1, metadata={CHECK: _workers})
    dashboard_port: int = field(default=8501, metadata={CHECK: _port})


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint to load: a local directory or a Hugging Face hub id; empty = built-in."""

    path: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineConfig:
    """The inference engine: device, batching and windowing (seconds of stream time)."""

    device: str = field(default="auto", metadata={CHECK: _device})
    half_precision: bool = True
    max_batch: int = field(default=32, metadata={CHECK: _positive})
    max_wait_ms: float = field(default=20.0, metadata={CHECK: _non_negative})
    hop_s: float = field(default=1.0, metadata={CHECK: _positive})
    window_s: float = field(default=0.0, metadata={CHECK: _non_negative})
    buffer_s: float = field(default=0.0, metadata={CHECK: _non_negative})
    catch_up_s: float = field(default=2.0, metadata={CHECK: _non_negative})
    feed_s: float = field(default=0.0, metadata={CHECK: _feed})
    kernel_cache: int = field(default=256, metadata={CHECK: _non_negative})
    top_k: int = field(default=3, metadata={CHECK: _positive})


@dataclass(frozen=True)
class CoreParams:
    """Parameters a pure core takes directly (smoothing, the gate, offline decoding): each checks
    its fields' ranges when built, raising :class:`ValueError` naming the field. A config table
    extends its core's parameters with keys of its own, and ``params()`` gives the core's alone.
    """

    def __post_init__(self) -> None:
        for name, check in field_checks(type(self)).items():
            value = getattr(self, name)
            problem = check(value)
            if problem:
                raise ValueError(f"{name} {problem}, got {value!r}")

    def _only(self, cls: type[P]) -> P:
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})


P = TypeVar("P", bound=CoreParams)


@dataclass(frozen=True)
class SmoothingParams(CoreParams):
    """Tuning of the probability smoother and the genre tracker
    (:mod:`stream_server.core.smoothing`): the keys of ``[smoothing]`` the tracker uses;
    :class:`SmoothingConfig` adds the rest.

    Attributes:
        time_constant_s: Time constant of the exponential smoothing, in seconds of stream time.
            ``0`` disables smoothing.
        switch_margin: How far (in probability, ``0..1``) a challenger's smoothed probability
            must exceed the current genre's for the challenger to count as ahead.
        min_dwell_s: How long, in seconds of stream time, a challenger must stay ahead by at
            least ``switch_margin`` without interruption before the current genre switches.
        stale_margin: A challenger whose smoothed probability exceeds the current genre's by at
            least this much (``0..1``) takes over at once, without dwell: the current genre
            never stays this far below a clear leader. ``1`` turns the rule off.
    """

    time_constant_s: float = field(default=2.0, metadata={CHECK: _non_negative})
    switch_margin: float = field(default=0.2, metadata={CHECK: _unit_interval})
    min_dwell_s: float = field(default=4.0, metadata={CHECK: _non_negative})
    stale_margin: float = field(default=0.5, metadata={CHECK: _unit_interval})

    def params(self) -> SmoothingParams:
        """Just the tracker's tuning, as a plain :class:`SmoothingParams`."""
        return self._only(SmoothingParams)


@dataclass(frozen=True)
class SmoothingConfig(SmoothingParams):
    """Probability smoothing and the genre-change hysteresis (seconds of stream time).

    A challenger leading the current genre by ``switch_margin`` for ``min_dwell_s`` takes over;
    one leading by ``stale_margin`` takes over at once (1: never at once). The stored timeline
    dates a confirmed change back to where the new genre took the lead, at most
    ``backdate_max_s`` (0: not at all). The first four keys are :class:`SmoothingParams`;
    :meth:`params` gives them alone.
    """

    backdate_max_s: float = field(default=30.0, metadata={CHECK: _non_negative})


@dataclass(frozen=True)
class GateParams(CoreParams):
    """Tuning of the music / speech / silence gate (:mod:`stream_server.core.gate`).

    Attributes:
        enabled: Off: every window is music (the gate is not consulted).
        silence_dbfs: A window whose newest hop is below this RMS level (dBFS) is silence.
        speech_threshold: A non-silent window whose speech probability (``0..1``) is at least
            this is speech.
        min_run_s: A run of windows of a new kind must span this many seconds of stream time
            (from its first window to its latest) before it shows; shorter runs are absorbed by
            what surrounds them. ``0``: every window shows its own kind.
    """

    enabled: bool = True
    silence_dbfs: float = field(default=-65.0, metadata={CHECK: _level_dbfs})
    speech_threshold: float = field(default=0.8, metadata={CHECK: _unit_interval})
    min_run_s: float = field(default=1.0, metadata={CHECK: _non_negative})


@dataclass(frozen=True)
class GateConfig(GateParams):
    """``[gate]``: :class:`GateParams`, and ``speech_model``, the speech detector's directory:
    empty for the shipped one (:data:`stream_server.inference.speech.DEFAULT_SPEECH_DIR`),
    ``"none"`` for none (nothing is speech)."""

    speech_model: str = ""

    def params(self) -> GateParams:
        """Just the gate's tuning, as a plain :class:`GateParams`."""
        return self._only(GateParams)


@dataclass(frozen=True)
class OfflineParams(CoreParams):
    """How whole files are decoded (:mod:`stream_server.core.decoding`): ``genrecast
    classify``, ``POST /classify``, ``evaluate``.

    ``decoding = "viterbi"``: the best label path over every window of the file at once (it may
    look ahead), each switch between genres costing ``switch_cost`` nats (the log-probability a
    path pays for it); ``"live"``: the causal live path, exactly as a stream of the same audio
    would show it.
    """

    decoding: str = field(default="viterbi", metadata={CHECK: _decoding})
    switch_cost: float = field(default=16.0, metadata={CHECK: _non_negative})

    def describe(self) -> str:
        """One line saying how the timeline was decoded."""
        return f"{self.decoding}: {OFFLINE_DECODINGS[self.decoding]}"


@dataclass(frozen=True)
class OfflineConfig(OfflineParams):
    """``[offline]``: :class:`OfflineParams` as a config table."""

    def params(self) -> OfflineParams:
        """The same values as a plain :class:`OfflineParams`."""
        return self._only(OfflineParams)


@dataclass(frozen=True)
class UpdatesConfig:
    """Fan-out of messages to ``/ws/updates`` subscribers."""

    queue_size: int = field(default=256, metadata={CHECK: _positive})
    history_size: int = field(default=4096, metadata={CHECK: _positive})


@dataclass(frozen=True)
class ClusterConfig:
    """A genrecast cluster on NATS (``genrecast worker``; off while ``urls`` is empty).

    ``urls``: the NATS servers (``nats://host:port``; any one reachable is enough, the client
    learns the rest); ``user`` and the password in the environment variable ``password_env``
    when the servers want them; ``request_timeout_s``: how long a node waits for a window's
    scores before it counts the window as skipped (a worker that died with it); ``replicas``:
    the NATS servers that keep each message of the cluster's updates stream and of its
    key-value buckets (streams, timelines, live streams, leases; 0: as many as there are, up
    to 3; at most 5); ``updates_kept``: the newest messages that stream keeps (a
    resume with ``since`` reaches back that far).
    """

    urls: list[str] = field(default_factory=list, metadata={CHECK: _nats_urls})
    user: str = ""
    password_env: str = "GENRECAST_NATS_PASSWORD"
    request_timeout_s: float = field(default=1.0, metadata={CHECK: _positive})
    replicas: int = field(default=0, metadata={CHECK: _replicas})
    updates_kept: int = field(default=1_000_000, metadata={CHECK: _positive})


@dataclass(frozen=True)
class StorageConfig:
    """Where timelines are kept (SQLite, WAL mode), and for how long.

    Streams that ended more than ``retention_days`` days ago are deleted with their timelines
    and titles (checked at start and then hourly); 0 keeps every stream for ever. Live streams
    are never deleted.
    """

    database: str = "genrecast.db"
    retention_days: float = field(default=30.0, metadata={CHECK: _non_negative})


@dataclass(frozen=True)
class SourcesConfig:
    """Streams the server pulls itself (``POST /streams {"url"}``): radio, HLS, files.

    ``open_timeout_s`` (seconds) bounds connecting and probing; ``stall_s`` (seconds) is how long
    a source may deliver no audio before its connection is dropped. A source that never
    delivered audio fails after ``first_connect_attempts`` failed connections (1: at its first
    failure, with the reason in ``GET /streams``). Once it has delivered audio, a lost source is
    reconnected, backing off exponentially from ``reconnect_min_s`` to ``reconnect_max_s``
    seconds; after ``max_reconnects`` failed reconnects in a row the stream fails (0: retry for
    ever).

    What may be pulled (:mod:`stream_server.sources.source_policy`): ``http``/``https`` URLs whose
    host resolves only to public addresses, unless ``allow_private_addresses`` (a LAN: loopback,
    private and link-local addresses; cloud metadata addresses stay refused) or the host is in
    ``allowed_hosts`` (``"host"`` or ``"host:port"``: any address); and files inside
    ``media_dir`` (empty: no local files at all).
    """

    open_timeout_s: float = field(default=10.0, metadata={CHECK: _positive})
    stall_s: float = field(default=10.0, metadata={CHECK: _positive})
    reconnect_min_s: float = field(default=0.5, metadata={CHECK: _positive})
    reconnect_max_s: float = field(default=30.0, metadata={CHECK: _positive})
    max_reconnects: int = field(default=10, metadata={CHECK: _non_negative})
    first_connect_attempts: int = field(default=1, metadata={CHECK: _positive})
    chunk_s: float = field(default=0.1, metadata={CHECK: _positive})
    media_dir: str = ""
    allow_private_addresses: bool = False
    allowed_hosts: list[str] = field(default_factory=list, metadata={CHECK: _host_list})


@dataclass(frozen=True)
class WebRTCConfig:
    """Browser microphones over WebRTC (``POST /webrtc/offer``, the ``/mic`` page).

    ``stun_server`` empty means host candidates only (loopback included), enough on one machine or
    a LAN; ``connect_timeout_s`` is how long a peer may take to connect before it is dropped;
    at most ``max_pending`` peers may be connecting at once (more offers get 503).
    """

    stun_server: str = ""
    connect_timeout_s: float = field(default=20.0, metadata={CHECK: _positive})
    max_pending: int = field(default=8, metadata={CHECK: _positive})


@dataclass(frozen=True)
class UploadConfig:
    """One-shot file classification (``POST /classify``).

    Uploads over ``max_bytes`` or longer than ``max_duration_s`` of audio are refused (413/422);
    the last ``cache_entries`` answers are kept, keyed by the SHA-256 of the content. At most
    ``max_concurrent`` uploads are received and classified at once (503 beyond: each holds up to
    ``max_duration_s`` of decoded audio in memory).
    """

    max_bytes: int = field(default=50 * 1024 * 1024, metadata={CHECK: _positive})
    max_duration_s: float = field(default=1800.0, metadata={CHECK: _positive})
    cache_entries: int = field(default=128, metadata={CHECK: _non_negative})
    max_concurrent: int = field(default=4, metadata={CHECK: _positive})


@dataclass(frozen=True)
class AuthConfig:
    """Who may use the server (:mod:`stream_server.serve.auth`).

    ``read_tokens``, ``ingest_tokens`` and ``admin_tokens`` list tokens by scope, each
    ``"env:NAME"`` or ``"file:PATH"`` (``GENRECAST_TOKEN`` in the environment is one more, with
    every scope); with none at all the server is open and listens on loopback only. ``hosts``:
    ``Host`` names it answers to besides loopback and its own address (``"*"``: any);
    ``origins``: browser origins (``scheme://host:port``) allowed besides its own;
    ``open_metrics``: ``/metrics`` without a token; ``ticket_s``: lifetime of browser tickets.
    """

    read_tokens: list[str] = field(default_factory=list)
    ingest_tokens: list[str] = field(default_factory=list)
    admin_tokens: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    origins: list[str] = field(default_factory=list, metadata={CHECK: _origin_list})
    open_metrics: bool = False
    ticket_s: float = field(default=60.0, metadata={CHECK: _positive})


@dataclass(frozen=True)
class Config:
    """The whole configuration: one frozen dataclass per TOML table."""

    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    webrtc: WebRTCConfig = field(default_factory=WebRTCConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    def replace(self, **tables: Any) -> Config:
        """Return a copy with some tables swapped out."""
        return dataclasses.replace(self, **tables)

    def overridden(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        model: str | None = None,
        device: str | None = None,
        insecure: bool | None = None,
        workers: int | None = None,
        cluster: str | None = None,
    ) -> Config:
        """A copy with the command line's ``--host``, ``--port``, ``--model``, ``--device``,
        ``--insecure``, ``--workers`` and ``--cluster`` (``None``: the config's own value) as
        ``server.host``, ``server.port``, ``model.path``, ``engine.device``,
        ``server.insecure``, ``server.workers`` and ``cluster.urls`` (comma-separated).

        Raises:
            ConfigError: ``--workers`` out of range (named as ``server.workers``), or more
                than one with an in-memory database; ``--cluster`` not NATS addresses (named as
                ``cluster.urls``).
        """
        server, model_table, engine = self.server, self.model, self.engine
        cluster_table = self.cluster
        if cluster is not None:
            urls = [url.strip() for url in cluster.split(",") if url.strip()]
            problem = _nats_urls(urls) or (None if urls else "expected nats://host:port addresses")
            if problem is not None:
                raise ConfigError("cluster.urls", f"{problem}, got {cluster!r}")
            cluster_table = dataclasses.replace(cluster_table, urls=urls)
        if workers is not None:
            problem = _workers(workers)
            if problem is not None:
                raise ConfigError("server.workers", problem)
            server = dataclasses.replace(server, workers=workers)
        if host is not None:
            server = dataclasses.replace(server, host=host)
        if insecure is not None:
            server = dataclasses.replace(server, insecure=insecure)
        if port is not None:
            server = dataclasses.replace(server, port=port)
        if model is not None:
            model_table = dataclasses.replace(model_table, path=model)
        if device is not None:
            engine = dataclasses.replace(engine, device=device)
        return _checked_together(
            self.replace(server=server, model=model_table, engine=engine, cluster=cluster_table)
        )


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation (str, int, float, bool, list[str], dict)."""
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of strings, got {value!r}")
        return list(value)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(key, f"expected a table of strings, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported config annotation {annotation!r}")  # pragma: no cover


def _build_table(name: str, cls: type[Any], raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(name, f"expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    checks = field_checks(cls)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        coerced = _coerce(dotted, value, hints[key])
        check = checks.get(key)
        problem = check(coerced) if check else None
        if problem:
            raise ConfigError(dotted, f"{problem}, got {value!r}")
        values[key] = coerced
    return cls(**values)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from parsed TOML; missing tables and keys take their defaults."""
    tables: dict[str, Any] = {}
    table_types = {
        f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
    }
    for name, value in raw.items():
        if name not in table_types:
            raise ConfigError(name, f"unknown table (known: {', '.join(sorted(table_types))})")
        tables[name] = _build_table(name, table_types[name], value)
    return _checked_together(Config(**tables))


def _checked_together(config: Config) -> Config:
    """``config``, once the keys that depend on one another agree.

    Raises:
        ConfigError: ``server.min_sample_rate`` above ``server.max_sample_rate``, or
            ``server.workers`` above 1 with ``storage.database = ":memory:"`` (each process
            would have a database of its own).
    """
    if config.server.min_sample_rate > config.server.max_sample_rate:
        raise ConfigError("server.min_sample_rate", "must not exceed server.max_sample_rate")
    if config.server.workers > 1 and config.cluster.urls:
        raise ConfigError(
            "server.workers",
            "a cluster node (cluster.urls) is one process: scale with more nodes and workers",
        )
    if config.server.workers > 1 and config.storage.database == ":memory:":
        raise ConfigError(
            "storage.database",
            "several workers (server.workers) share one database: name a file, not :memory:",
        )
    return config


def load_config(path: str | Path | None = None) -> Config:
    """Load ``path`` (default: the project's ``config.toml`` if present, else built-in defaults)."""
    if path is None:
        if not PROJECT_CONFIG.is_file():
            return Config()
        path = PROJECT_CONFIG
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("<file>", f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"{path} is not valid TOML: {exc}") from None
    return config_from_dict(raw)


__all__ = [
    "CHECK",
    "OFFLINE_DECODINGS",
    "PROJECT_CONFIG",
    "AuthConfig",
    "ClusterConfig",
    "Config",
    "CoreParams",
    "EngineConfig",
    "GateConfig",
    "GateParams",
    "ModelConfig",
    "OfflineConfig",
    "OfflineParams",
    "ServerConfig",
    "SmoothingConfig",
    "SmoothingParams",
    "SourcesConfig",
    "StorageConfig",
    "UpdatesConfig",
    "UploadConfig",
    "WebRTCConfig",
    "config_from_dict",
    "field_checks",
    "load_config",
    "parse_host_entry",
]
