"""One typed configuration, loaded once from ``config.toml`` and passed explicitly.

Each TOML table maps to a frozen dataclass; :class:`Config` holds one of each. Unknown keys,
wrong types and out-of-range values raise :class:`~stream_server.errors.ConfigError` naming the
key (``engine.max_batch``) and the bad value. A missing key takes the default written here, which
is also what the project's ``config.toml`` documents.

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
from typing import Any
from urllib.parse import urlsplit

from stream_server.errors import ConfigError

#: The ``config.toml`` shipped at the project root (used when no path is given and it exists).
PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP/WebSocket listener and the limits it enforces on clients.

    ``max_streams_per_client``: live streams one client address may hold at once;
    ``start_timeout_s``: seconds an ingest connection may take to send ``start``;
    ``idle_timeout_s``: seconds a pushed stream may send no audio before it is ended;
    ``insecure``: listen on a non-loopback ``host`` although no token is configured ([auth]);
    ``header_timeout_s``: seconds a connection may take to send a complete request head, from
    connecting and from the first byte of each further request on a kept-alive connection
    (:mod:`stream_server.http_timeouts`).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_frame_bytes: int = 1 << 20
    min_sample_rate: int = 8000
    max_sample_rate: int = 384_000
    max_channels: int = 8
    max_streams: int = 64
    max_streams_per_client: int = 16
    start_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0
    log_level: str = "info"
    insecure: bool = False
    header_timeout_s: float = 10.0


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint to load: a local directory or a Hugging Face hub id; empty = built-in."""

    path: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineConfig:
    """The inference engine: device, batching and windowing (seconds of stream time)."""

    device: str = "auto"
    half_precision: bool = True
    max_batch: int = 32
    max_wait_ms: float = 20.0
    hop_s: float = 1.0
    window_s: float = 0.0
    buffer_s: float = 30.0
    top_k: int = 3


@dataclass(frozen=True)
class SmoothingConfig:
    """Probability smoothing and the genre-change hysteresis (seconds of stream time).

    A challenger leading the current genre by ``switch_margin`` for ``min_dwell_s`` takes over;
    one leading by ``stale_margin`` takes over at once (1: never at once). The stored timeline
    dates a confirmed change back to where the new genre took the lead, at most
    ``backdate_max_s`` (0: not at all).
    """

    time_constant_s: float = 2.0
    switch_margin: float = 0.2
    min_dwell_s: float = 4.0
    stale_margin: float = 0.5
    backdate_max_s: float = 30.0


@dataclass(frozen=True)
class GateConfig:
    """The music / speech / silence gate (:mod:`stream_server.gate`).

    A window whose newest hop is below ``silence_dbfs`` (RMS, dBFS) is silence; else one whose
    speech probability is at least ``speech_threshold`` is speech; else music. A new kind shows
    once its run of windows spans ``min_run_s``. ``enabled`` off: every window is music.
    ``speech_model`` is the speech detector's directory: empty for the shipped one
    (:data:`stream_server.speech.DEFAULT_SPEECH_DIR`), ``"none"`` for none (nothing is speech).
    """

    enabled: bool = True
    silence_dbfs: float = -65.0
    speech_threshold: float = 0.8
    min_run_s: float = 1.0
    speech_model: str = ""


#: The decodings ``[offline] decoding`` may name (see :mod:`stream_server.decoding`), each with
#: the words reports use for it.
OFFLINE_DECODINGS: dict[str, str] = {
    "viterbi": "the whole file at once, looking ahead (Viterbi over the window probabilities); "
    "a live stream decodes causally",
    "live": "causal, as a live stream of the same audio shows it",
}


@dataclass(frozen=True)
class OfflineConfig:
    """How whole files are decoded: ``genrecast classify``, ``POST /classify``, ``evaluate``.

    ``decoding = "viterbi"``: the best label path over every window of the file at once (it may
    look ahead), each switch between genres costing ``switch_cost`` nats; ``"live"``: the causal
    live path, exactly as a stream of the same audio would show it.
    """

    decoding: str = "viterbi"
    switch_cost: float = 16.0


@dataclass(frozen=True)
class UpdatesConfig:
    """Fan-out of messages to ``/ws/updates`` subscribers."""

    queue_size: int = 256
    history_size: int = 4096


@dataclass(frozen=True)
class StorageConfig:
    """Where timelines are kept (SQLite, WAL mode), and for how long.

    Streams that ended more than ``retention_days`` days ago are deleted with their timelines
    and titles (checked at start and then hourly); 0 keeps every stream for ever. Live streams
    are never deleted.
    """

    database: str = "genrecast.db"
    retention_days: float = 30.0


@dataclass(frozen=True)
class SourcesConfig:
    """Streams the server pulls itself (``POST /streams {"url"}``): radio, HLS, files.

    ``open_timeout_s`` bounds connecting and probing; ``stall_s`` is how long a live source may
    deliver no audio before it is dropped and reconnected; reconnects back off exponentially from
    ``reconnect_min_s`` to ``reconnect_max_s``; after ``max_reconnects`` failed reconnects in a
    row the stream fails (0: retry for ever).

    What may be pulled (:mod:`stream_server.source_policy`): ``http``/``https`` URLs whose host
    resolves only to public addresses, unless ``allow_private_addresses`` (a LAN: loopback,
    private and link-local addresses; cloud metadata addresses stay refused) or the host is in
    ``allowed_hosts`` (``"host"`` or ``"host:port"``: any address); and files inside
    ``media_dir`` (empty: no local files at all).
    """

    open_timeout_s: float = 10.0
    stall_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_reconnects: int = 10
    chunk_s: float = 0.1
    media_dir: str = ""
    allow_private_addresses: bool = False
    allowed_hosts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WebRTCConfig:
    """Browser microphones over WebRTC (``POST /webrtc/offer``, the ``/mic`` page).

    ``stun_server`` empty means host candidates only (loopback included), enough on one machine or
    a LAN; ``connect_timeout_s`` is how long a peer may take to connect before it is dropped;
    at most ``max_pending`` peers may be connecting at once (more offers get 503).
    """

    stun_server: str = ""
    connect_timeout_s: float = 20.0
    max_pending: int = 8


@dataclass(frozen=True)
class UploadConfig:
    """One-shot file classification (``POST /classify``).

    Uploads over ``max_bytes`` or longer than ``max_duration_s`` of audio are refused (413/422);
    the last ``cache_entries`` answers are kept, keyed by the SHA-256 of the content. At most
    ``max_concurrent`` uploads are received and classified at once (503 beyond: each holds up to
    ``max_duration_s`` of decoded audio in memory).
    """

    max_bytes: int = 50 * 1024 * 1024
    max_duration_s: float = 1800.0
    cache_entries: int = 128
    max_concurrent: int = 4


@dataclass(frozen=True)
class AuthConfig:
    """Who may use the server (:mod:`stream_server.auth`).

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
    origins: list[str] = field(default_factory=list)
    open_metrics: bool = False
    ticket_s: float = 60.0


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
    ) -> Config:
        """A copy with the command line's ``--host``, ``--port``, ``--model``, ``--device`` and
        ``--insecure`` (``None``: the config's own value) as ``server.host``, ``server.port``,
        ``model.path``, ``engine.device`` and ``server.insecure``."""
        server, model_table, engine = self.server, self.model, self.engine
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
        return self.replace(server=server, model=model_table, engine=engine)


# (table, key) -> check on the already type-checked value: returns an error text or None.
_Check = typing.Callable[[Any], str | None]


def _positive(v: Any) -> str | None:
    return None if 0 < v < math.inf else "must be a finite number > 0"


def _non_negative(v: Any) -> str | None:
    return None if 0 <= v < math.inf else "must be a finite number >= 0"


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


_CHECKS: dict[str, _Check] = {
    "server.port": _port,
    "server.max_frame_bytes": _positive,
    "server.min_sample_rate": _positive,
    "server.max_sample_rate": _positive,
    "server.max_channels": _positive,
    "server.max_streams": _positive,
    "server.max_streams_per_client": _positive,
    "server.start_timeout_s": _positive,
    "server.idle_timeout_s": _positive,
    "server.header_timeout_s": _positive,
    "server.log_level": _log_level,
    "engine.device": _device,
    "engine.max_batch": _positive,
    "engine.max_wait_ms": _non_negative,
    "engine.hop_s": _positive,
    "engine.window_s": _non_negative,
    "engine.buffer_s": _positive,
    "engine.top_k": _positive,
    "smoothing.time_constant_s": _non_negative,
    "smoothing.switch_margin": _unit_interval,
    "smoothing.min_dwell_s": _non_negative,
    "smoothing.stale_margin": _unit_interval,
    "smoothing.backdate_max_s": _non_negative,
    "gate.silence_dbfs": _level_dbfs,
    "gate.speech_threshold": _unit_interval,
    "gate.min_run_s": _non_negative,
    "offline.decoding": _decoding,
    "offline.switch_cost": _non_negative,
    "updates.queue_size": _positive,
    "updates.history_size": _positive,
    "storage.retention_days": _non_negative,
    "sources.open_timeout_s": _positive,
    "sources.stall_s": _positive,
    "sources.reconnect_min_s": _positive,
    "sources.reconnect_max_s": _positive,
    "sources.max_reconnects": _non_negative,
    "sources.chunk_s": _positive,
    "sources.allowed_hosts": _host_list,
    "webrtc.connect_timeout_s": _positive,
    "webrtc.max_pending": _positive,
    "upload.max_bytes": _positive,
    "upload.max_duration_s": _positive,
    "upload.cache_entries": _non_negative,
    "upload.max_concurrent": _positive,
    "auth.origins": _origin_list,
    "auth.ticket_s": _positive,
}


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
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{name}.{key}"
        coerced = _coerce(dotted, value, hints[key])
        check = _CHECKS.get(dotted)
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
    config = Config(**tables)
    if config.server.min_sample_rate > config.server.max_sample_rate:
        raise ConfigError("server.min_sample_rate", "must not exceed server.max_sample_rate")
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
    "OFFLINE_DECODINGS",
    "PROJECT_CONFIG",
    "AuthConfig",
    "Config",
    "EngineConfig",
    "GateConfig",
    "ModelConfig",
    "OfflineConfig",
    "ServerConfig",
    "SmoothingConfig",
    "SourcesConfig",
    "StorageConfig",
    "UpdatesConfig",
    "UploadConfig",
    "WebRTCConfig",
    "config_from_dict",
    "load_config",
    "parse_host_entry",
]
