"""The one message schema shared by server, command-line clients and dashboard.

Every WebSocket text message is a JSON object with a ``type`` field. Client to server, on
``/ws/ingest``: :class:`StartMessage` first, then binary PCM frames, then optionally
:class:`StopMessage`. Server to client, on ``/ws/ingest`` and ``/ws/updates``:
:class:`StreamStarted`, :class:`GenreUpdate`, :class:`GenreChange`, :class:`TrackChange`,
:class:`StreamEnded`, :class:`ErrorMessage`.

Every string a client sends (stream names, pulled sources) passes :func:`check_text` before
anything is registered or stored: valid Unicode that UTF-8 can carry (no lone surrogates), no
control characters or line separators, a bounded length.

Times: ``stream_time_s`` is seconds of audio since the stream started (at the model's rate);
``wall_time`` is unix seconds. ``seq`` is the server-wide sequence number of published messages,
strictly increasing; ``/ws/updates?since=SEQ`` replays everything after ``SEQ``.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Final, Literal, NotRequired, TypedDict, get_args

from stream_server.errors import AudioFormatError, ProtocolError

SampleFormat = Literal["s16le", "f32le"]
"""Wire sample formats: signed 16-bit little-endian integers, or IEEE float32 little-endian."""

SAMPLE_FORMATS: Final[tuple[SampleFormat, ...]] = get_args(SampleFormat)

#: The ``genre`` of an update, a change or a timeline segment while the audio is speech or
#: silence rather than music (:mod:`stream_server.core.gate`); every other value is a genre label.
SPEECH: Final = "speech"
SILENCE: Final = "silence"
NON_MUSIC_LABELS: frozenset[str] = frozenset({SPEECH, SILENCE})

#: Longest stream name a client may give, in characters.
MAX_NAME_CHARS: Final = 200
#: Longest source (URL or path) ``POST /streams`` takes, in characters.
MAX_SOURCE_CHARS: Final = 4096

#: Unicode categories refused in client text: control characters (C0, DEL, C1), lone surrogates,
#: and line and paragraph separators (a name must not break a log line or a CSV row).
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})


class StartMessage(TypedDict):
    """Opens an ingest stream; PCM frames that follow are interleaved ``format`` samples."""

    type: Literal["start"]
    sample_rate: int
    channels: int
    format: SampleFormat
    name: NotRequired[str]


class StopMessage(TypedDict):
    """Ends the ingest stream; the server answers with :class:`StreamEnded`."""

    type: Literal["stop"]


ClientMessage = StartMessage | StopMessage


class LabelProb(TypedDict):
    label: str
    prob: float


class StreamStarted(TypedDict):
    type: Literal["stream.started"]
    seq: int
    stream_id: str
    name: str
    kind: str
    wall_time: float


class GenreUpdate(TypedDict):
    """One computed window: its raw top-k, every label's smoothed probability (best first) and
    the current genre decided from them.

    ``genre`` is :data:`SPEECH` or :data:`SILENCE` while the audio is judged speech or silence
    (``confidence`` is then the window's speech probability, or 1 for silence); ``top`` and
    ``smoothed`` stay the genre model's, and the smoothed genres are not moved by such windows.
    """

    type: Literal["genre.update"]
    seq: int
    stream_id: str
    stream_time_s: float
    window_start_s: float
    wall_time: float
    top: list[LabelProb]
    smoothed: list[LabelProb]
    genre: str
    confidence: float
    latency_ms: float


class GenreChange(TypedDict):
    """The smoothed genre changed (``previous`` is None for the first genre of a stream).

    ``previous`` and ``genre`` may be :data:`SPEECH` or :data:`SILENCE`, as in
    :class:`GenreUpdate`; ``stream_time_s`` is when the change was confirmed (the stored timeline
    dates it back to where the new label took over).
    """

    type: Literal["genre.change"]
    seq: int
    stream_id: str
    stream_time_s: float
    wall_time: float
    previous: str | None
    genre: str
    confidence: float


class TrackChange(TypedDict):
    """A pulled stream announced a new title (ICY ``StreamTitle``, or the source's own tag)."""

    type: Literal["track.change"]
    seq: int
    stream_id: str
    title: str
    stream_time_s: float
    wall_time: float


class StreamEnded(TypedDict):
    type: Literal["stream.ended"]
    seq: int
    stream_id: str
    reason: str
    stream_time_s: float
    wall_time: float
    windows_computed: int
    windows_skipped: int


class ErrorMessage(TypedDict):
    """A problem reported to one client; ``code`` is a short machine-readable word."""

    type: Literal["error"]
    code: str
    message: str
    stream_id: NotRequired[str]


ServerMessage = StreamStarted | GenreUpdate | GenreChange | TrackChange | StreamEnded | ErrorMessage
PublishedMessage = StreamStarted | GenreUpdate | GenreChange | TrackChange | StreamEnded

SERVER_TYPES = frozenset(
    {"stream.started", "genre.update", "genre.change", "track.change", "stream.ended", "error"}
)


#: Longest WebSocket close reason, in bytes of UTF-8 (a close frame's payload is at most 125).
MAX_CLOSE_REASON_BYTES: Final = 123


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame can carry: 123 bytes of UTF-8, whole characters (a
    longer reason fails the close, and the client sees the connection drop with 1006)."""
    return text.encode("utf-8", "replace")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def check_text(value: object, key: str, max_chars: int) -> str:
    """``value`` if it is a string a client may give as ``key``, else :class:`ProtocolError`
    (code ``invalid_text``, close code 1007) naming ``key`` and what is wrong.

    Refused: a non-string, more than ``max_chars`` characters, lone surrogates (UTF-8 cannot
    carry them, so neither can the store), control characters and line separators.
    """
    if not isinstance(value, str):
        raise ProtocolError(
            f"{key!r} must be a string, got {type(value).__name__}",
            code="invalid_text",
            close_code=1007,
        )
    if len(value) > max_chars:
        raise ProtocolError(
            f"{key!r} must be at most {max_chars} characters, got {len(value)}",
            code="invalid_text",
            close_code=1007,
        )
    for at, char in enumerate(value):
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES:
            what = "a lone surrogate" if category == "Cs" else "a control character"
            raise ProtocolError(
                f"{key!r} holds {what} (U+{ord(char):04X}) at position {at}",
                code="invalid_text",
                close_code=1007,
            )
    return value


class StreamRequest(TypedDict):
    """``POST /streams``: a source the server pulls itself (an http(s) URL, or a file in the
    configured media folder) and an optional name."""

    url: str
    name: NotRequired[str]


def parse_stream_request(body: str | bytes) -> StreamRequest:
    """Parse and validate a ``POST /streams`` body; raises :class:`ProtocolError`."""
    obj = _load_object(body)
    url = check_text(obj.get("url"), "url", MAX_SOURCE_CHARS).strip()
    if not url:
        raise ProtocolError(
            "'url' must be a non-empty string (an http(s) URL or a file in the media folder)",
            code="invalid_text",
            close_code=1007,
        )
    request = StreamRequest(url=url)
    name = obj.get("name")
    if name is not None:
        request["name"] = check_text(name, "name", MAX_NAME_CHARS)
    return request


def _load_object(text: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as exc:  # bad syntax, bad UTF-8, or an integer of too many digits
        raise ProtocolError(f"invalid JSON: {exc}", code="invalid_json", close_code=1007) from None
    except RecursionError:
        raise ProtocolError(
            "invalid JSON: nested too deeply", code="invalid_json", close_code=1007
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message must be a JSON object", code="invalid_json", close_code=1007)
    return obj


def _int_field(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"'start' needs an integer {key!r}, got {value!r}")
    return value


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse and validate a client text message; raises :class:`ProtocolError` (clear text)."""
    obj = _load_object(text)
    kind = obj.get("type")
    if kind == "stop":
        return StopMessage(type="stop")
    if kind != "start":
        raise ProtocolError(f"unknown message type {kind!r} (expected 'start' or 'stop')")
    fmt = obj.get("format", "s16le")
    if fmt not in SAMPLE_FORMATS:
        raise AudioFormatError(
            f"unknown sample format {fmt!r} (supported: {', '.join(SAMPLE_FORMATS)})"
        )
    start = StartMessage(
        type="start",
        sample_rate=_int_field(obj, "sample_rate"),
        channels=_int_field(obj, "channels"),
        format=fmt,
    )
    name = obj.get("name")
    if name is not None:
        start["name"] = check_text(name, "name", MAX_NAME_CHARS)
    return start


def parse_server_message(text: str | bytes) -> ServerMessage:
    """Parse a message received from the server (for clients); checks only the ``type``."""
    obj = _load_object(text)
    if obj.get("type") not in SERVER_TYPES:
        raise ProtocolError(f"unknown server message type {obj.get('type')!r}")
    return obj  # type: ignore[return-value]


def dumps(message: ServerMessage | ClientMessage) -> str:
    """Serialise a message compactly."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


#: How ``seq`` 0 follows ``type`` in :func:`dumps` of a published message (every one is built
#: with ``type``, ``seq`` and ``stream_id`` first).
_SEQ_ZERO = ',"seq":0,'


def stamp_seq(text: str, seq: int) -> str:
    """``text``, :func:`dumps` of a published message built with ``seq`` 0, with ``seq`` set,
    without parsing it again (the engine process of ``serve --workers N`` stamps every
    worker's messages).

    Raises:
        ValueError: ``text`` does not start ``{"type":"...","seq":0,``.
    """
    head, found, tail = text.partition(_SEQ_ZERO)
    if not found or not head.startswith('{"type":"') or head.count('"') != 4:
        raise ValueError("not a published message with seq 0 after its type")
    return f'{head},"seq":{seq},{tail}'


def error(code: str, message: str, stream_id: str | None = None) -> ErrorMessage:
    """Build an :class:`ErrorMessage`."""
    msg = ErrorMessage(type="error", code=code, message=message)
    if stream_id is not None:
        msg["stream_id"] = stream_id
    return msg


# -- one-shot file classification (HTTP, ``POST /classify``) --------------------------------------


class ClassifiedWindow(TypedDict):
    """One window of a classified file: its span in seconds of audio, raw top-k, smoothed genre."""

    start_s: float
    end_s: float
    top: list[LabelProb]
    genre: str
    confidence: float


class ClassifiedSegment(TypedDict):
    """A stretch of one smoothed genre (seconds of audio); ``updates`` windows fell in it."""

    start_s: float
    end_s: float
    genre: str
    confidence: float
    updates: int


class ClassifyResult(TypedDict):
    """The answer to ``POST /classify``: one whole file through the live windows and smoothing.

    ``probabilities`` holds every display label (mean over the windows labelled music -- all
    windows when none is -- best first, summing to 1);
    ``genre``/``confidence`` is the best of them. ``duration_s`` is seconds of decoded audio;
    ``processing_ms`` the server's time from the whole file received to the answer, in
    milliseconds; ``cached`` says the answer was kept from an earlier upload of the same bytes
    (``sha256``, hex). ``padded``: shorter than one window, padded with silence. ``decoding``
    says how the timeline was decoded (``"viterbi"``: the whole file at once, looking ahead;
    ``"live"``: causally, as a live stream); ``windows[].genre`` is the decoded label of each
    window. A ``genre`` of a window or segment may be :data:`SPEECH` or :data:`SILENCE`.
    ``genrecast classify --json`` prints this same shape for a file classified locally
    (``processing_ms`` then from opening the file, ``cached`` false).
    """

    source: str
    sha256: str
    model: str
    device: str
    duration_s: float
    processing_ms: float
    cached: bool
    genre: str
    confidence: float
    probabilities: dict[str, float]
    padded: bool
    decoding: str
    windows: list[ClassifiedWindow]
    segments: list[ClassifiedSegment]
