"""The one exception root of genrecast, and every exception class it raises.

Every error genrecast raises on purpose derives from :class:`GenrecastError`, and every such
class is defined here::

    GenrecastError
    ├── ConfigError            a config key is unknown, mistyped or out of range (names it)
    ├── ProtocolError          a client broke the protocol; has a message code and a close code
    │   └── AudioFormatError   the announced PCM format cannot be ingested
    ├── DecodeError            an audio file or URL could not be opened or decoded
    │   └── SourceStalled      a pulled source delivered no audio for ``sources.stall_s``
    ├── ModelLoadError         a checkpoint could not be found or loaded
    ├── MissingExtraError      a command needs an optional extra that is not installed
    ├── DatasetError           a training / evaluation dataset is missing, empty or malformed
    ├── StorageError           the timeline database could not be read or written
    ├── EngineStopped          the engine stopped before a one-shot run finished
    ├── StreamStateError       a pulled stream was moved to a state it cannot reach
    ├── SourceRefused          a source to pull is not allowed (or does not exist: same message)
    ├── NotHttp                a server to pull answered ``ICY 200 OK``, not HTTP (the puller
    │                          then asks it by hand)
    ├── UploadError            an uploaded file was refused; has an HTTP status
    ├── WebRTCError            a WebRTC offer was refused; has an HTTP status
    ├── ClientError            the command-line client could not talk to a server
    │   ├── AccessRefused      ... because it wants a token (401) or more scopes (403)
    │   └── PullFailed         ... or would not pull a source, or pulling it failed first
    ├── CannotListen           the server cannot listen on its host and port (busy, no right)
    ├── SoakError              a soak was asked for outside its bounds or could not start
    ├── ClusterError           a cluster (NATS servers, nodes, workers) could not be made or run
    └── _Stopped               private to the puller (:mod:`stream_server.sources.puller`): it
                               was stopped while reading (control flow; it never leaves it)

The ring buffer (:mod:`ring_buffer`, a pure package that depends on numpy only) has exceptions of
its own, in :mod:`ring_buffer.errors`, re-exported here::

    RingBufferError            (an Exception, not a GenrecastError)
    └── WindowUnavailable      a ring-buffer read asked for samples it does not hold
        ├── WindowOverwritten  ... because they were already overwritten (reader too slow)
        └── WindowNotWritten   ... because they have not been written yet

They are not :class:`GenrecastError` subclasses: the pure core cannot import the application,
and application-level subclasses of both would not catch what the ring buffer itself raises.
``except WindowUnavailable`` (imported from here or from :mod:`ring_buffer`) catches them; an
``except GenrecastError`` does not (a window read that fails is a bug of the reader, never an
error shown to a user).
"""

from __future__ import annotations

from ring_buffer.errors import (
    RingBufferError,
    WindowNotWritten,
    WindowOverwritten,
    WindowUnavailable,
)


class GenrecastError(Exception):
    """Root of every error genrecast raises on purpose."""


class ConfigError(GenrecastError):
    """A configuration value is invalid. The message names the key, e.g. ``engine.max_batch``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key {key!r}: {message}")
        self.key = key


class ProtocolError(GenrecastError):
    """A client broke the protocol.

    ``code`` is a short machine-readable word sent in the ``error`` message; ``close_code`` is the
    WebSocket close code the connection is closed with (RFC 6455 section 7.4.1).
    """

    def __init__(self, message: str, *, code: str = "protocol", close_code: int = 1008) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code


class AudioFormatError(ProtocolError):
    """The announced audio format (sample format, rate or channel count) is not supported."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unsupported_format", close_code=1003)


class DecodeError(GenrecastError):
    """Audio could not be opened or decoded."""


class SourceStalled(DecodeError):
    """A pulled source delivered no audio for ``sources.stall_s`` seconds."""


class ModelLoadError(GenrecastError):
    """A model checkpoint could not be found or loaded."""


class MissingExtraError(GenrecastError):
    """A feature needs an optional extra (``webrtc``, ``dashboard``, ``train``, ``cluster``)
    that is not installed.

    The message names the feature, the extra and the command that installs it.
    """


class DatasetError(GenrecastError):
    """A dataset folder, genre or split file is missing, empty or malformed."""


class StorageError(GenrecastError):
    """The timeline database could not be read or written."""


class SourceRefused(GenrecastError):
    """A source the server was asked to pull is not allowed
    (:mod:`stream_server.sources.source_policy`).

    The message is the same whatever the reason, so that a client cannot tell a file that does
    not exist from one it may not read, nor a name that does not resolve from one that resolves
    to a private address. ``detail`` says why, for the server's log only. ``transient`` is true
    when the reason may pass (the host name did not resolve): a stream that has delivered audio
    retries then, as after a connection error, instead of failing at once; ``host`` and
    ``port`` are then the name that did not resolve and the port it was wanted on.
    """

    MESSAGE = (
        "source not allowed: the server pulls only http(s) URLs of hosts it may reach "
        "and files in its media folder"
    )

    def __init__(
        self,
        detail: str,
        *,
        transient: bool = False,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(self.MESSAGE)
        self.detail = detail
        self.transient = transient
        self.host = host
        self.port = port


class EngineStopped(GenrecastError):
    """The engine stopped before it ran the work it was given."""


class StreamStateError(GenrecastError):
    """A pulled stream was asked to make a state change its state machine does not allow."""


class NotHttp(GenrecastError):
    """A server answered with something that is not HTTP (``ICY 200 OK``); ``url`` is where."""

    def __init__(self, url: str) -> None:
        super().__init__(f"{url!r} did not answer in HTTP")
        self.url = url


class UploadError(GenrecastError):
    """An upload was refused; ``status`` is the HTTP status to answer with (4xx, or 503)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class WebRTCError(GenrecastError):
    """An offer cannot be answered, or the received audio cannot be ingested.

    ``status`` is the HTTP status the offer endpoint answers with (400: the client's offer).
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ClientError(GenrecastError):
    """The server refused a client or broke off the conversation."""


class PullFailed(ClientError):
    """The server would not pull a source, or pulling it failed before it went live."""


class CannotListen(GenrecastError):
    """The server cannot listen where it is told to; the message says why and what to change."""


class AccessRefused(ClientError):
    """The server wants a token (``status`` 401) or one with more scopes (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SoakError(GenrecastError):
    """A soak was asked for outside its bounds, or could not start its server."""


class ClusterError(GenrecastError):
    """A genrecast cluster could not be set up or run: a NATS server that would not start or
    join, a cluster asked for with bad sizes or without credentials off loopback."""


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it, outermost first: its ``__cause__`` (else its
    ``__context__`` unless suppressed) and exceptions among its arguments (httpcore re-raises
    its errors ``from None``, the socket's error kept as the argument), at most 16."""
    out: list[BaseException] = []
    waiting: list[BaseException] = [exc]
    while waiting and len(out) < 16:
        current = waiting.pop(0)
        if any(current is seen for seen in out):
            continue
        out.append(current)
        waiting += [arg for arg in current.args if isinstance(arg, BaseException)]
        if current.__cause__ is not None:
            waiting.append(current.__cause__)
        elif current.__context__ is not None and not current.__suppress_context__:
            waiting.append(current.__context__)
    return out


__all__ = [
    "AccessRefused",
    "AudioFormatError",
    "CannotListen",
    "ClientError",
    "ClusterError",
    "ConfigError",
    "DatasetError",
    "DecodeError",
    "EngineStopped",
    "GenrecastError",
    "MissingExtraError",
    "ModelLoadError",
    "NotHttp",
    "ProtocolError",
    "PullFailed",
    "RingBufferError",
    "SoakError",
    "SourceRefused",
    "SourceStalled",
    "StorageError",
    "StreamStateError",
    "UploadError",
    "WebRTCError",
    "WindowNotWritten",
    "WindowOverwritten",
    "WindowUnavailable",
    "exception_chain",
]
