"""The one exception root of genrecast.

Every error genrecast raises on purpose derives from :class:`GenrecastError`::

    GenrecastError
    ├── ConfigError            a config key is unknown, mistyped or out of range (names it)
    ├── ProtocolError          a client broke the protocol; has a message code and a close code
    │   └── AudioFormatError   the announced PCM format cannot be ingested
    ├── WindowUnavailable      a ring-buffer read asked for samples it does not hold
    │   ├── WindowOverwritten  ... because they were already overwritten (reader too slow)
    │   └── WindowNotWritten   ... because they have not been written yet
    ├── DecodeError            an audio file or URL could not be opened or decoded
    │   └── SourceStalled      a pulled source delivered no audio for ``sources.stall_s`` (puller)
    ├── ModelLoadError         a checkpoint could not be found or loaded
    ├── MissingExtraError      a command needs an optional extra that is not installed
    ├── DatasetError           a training / evaluation dataset is missing, empty or malformed
    ├── StorageError           the timeline database could not be read or written
    ├── EngineStopped          the engine stopped before a one-shot run finished (engine)
    ├── StreamStateError       a pulled stream was moved to a state it cannot reach (puller)
    ├── SourceRefused          a source to pull is not allowed (or does not exist: same message)
    ├── UploadError            an uploaded file was refused; has an HTTP status (upload)
    ├── WebRTCError            a WebRTC offer was refused; has an HTTP status (webrtc)
    └── ClientError            the command-line client could not talk to a server (client)

The classes marked with a module live there, next to the code that raises them.
"""

from __future__ import annotations


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


class WindowUnavailable(GenrecastError):
    """A window ``[start, start + n)`` of samples cannot be read from a ring buffer."""


class WindowOverwritten(WindowUnavailable):
    """The window starts before the oldest sample the buffer still holds."""


class WindowNotWritten(WindowUnavailable):
    """The window ends after the newest sample written so far."""


class DecodeError(GenrecastError):
    """Audio could not be opened or decoded."""


class ModelLoadError(GenrecastError):
    """A model checkpoint could not be found or loaded."""


class MissingExtraError(GenrecastError):
    """A feature needs an optional extra (``webrtc``, ``dashboard``, ``train``) not installed.

    The message names the feature, the extra and the command that installs it.
    """


class DatasetError(GenrecastError):
    """A dataset folder, genre or split file is missing, empty or malformed."""


class StorageError(GenrecastError):
    """The timeline database could not be read or written."""


class SourceRefused(GenrecastError):
    """A source the server was asked to pull is not allowed (:mod:`stream_server.source_policy`).

    The message is the same whatever the reason, so that a client cannot tell a file that does
    not exist from one it may not read, nor a name that does not resolve from one that resolves
    to a private address. ``detail`` says why, for the server's log only. ``transient`` is true
    when the reason may pass (the host name did not resolve): a stream already pulling retries
    then, as after a connection error, instead of failing at once.
    """

    MESSAGE = (
        "source not allowed: the server pulls only http(s) URLs of hosts it may reach "
        "and files in its media folder"
    )

    def __init__(self, detail: str, *, transient: bool = False) -> None:
        super().__init__(self.MESSAGE)
        self.detail = detail
        self.transient = transient
