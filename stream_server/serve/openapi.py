"""The HTTP API and the WebSocket protocol described from the code: ``GET /openapi.json``.

:func:`openapi_schema` walks the app's own routing table, so every route it serves is listed
with the methods it takes; a route this module has no entry for still appears, marked
``x-undocumented`` (a test fails on that). What a route is for, its parameters, request body and
status codes are written once, in :data:`OPERATIONS`, keyed by method and path. Body shapes are
TypedDicts -- those of :mod:`stream_server.messages`, :mod:`stream_server.serve.upload` and the
answers below, which the handlers build -- and the dataclasses whose ``to_dict()`` they send
(:class:`~stream_server.core.summary.StreamSummary`), turned into JSON Schema by :func:`schema_of`,
so a field added to one shows up here. The scope a route needs comes from the same function the
guard applies.

The WebSockets, which OpenAPI cannot describe, are in the document's ``x-websockets``
section: each endpoint's query parameters, what the client sends and what it gets (the message
TypedDicts of :mod:`stream_server.messages`), and the close and error codes.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict, Union, get_args, get_origin

from starlette.routing import BaseRoute, Route, WebSocketRoute

from stream_server import messages
from stream_server.core.summary import StreamSummary
from stream_server.serve.auth import Scope, TicketAnswer
from stream_server.serve.upload import ClassifyAnswer

__all__ = [
    "CLOSE_CODES",
    "ERROR_CODES",
    "JSON_FORMS",
    "OPERATIONS",
    "SOCKETS",
    "DeletedAnswer",
    "ErrorAnswer",
    "HealthAnswer",
    "NotReadyAnswer",
    "Op",
    "ReadyAnswer",
    "StreamInfo",
    "StreamList",
    "TimelineAnswer",
    "openapi_schema",
    "schema_of",
]

#: A JSON object (a schema, a document, a part of one).
Json = dict[str, Any]
#: A body shape: a TypedDict class, or a JSON Schema written out.
Shape = type | Json

OPENAPI_VERSION = "3.1.0"
SCHEMA_PREFIX = "#/components/schemas/"


# -- the answers the handlers build ----------------------------------------------------------


class ReadyAnswer(TypedDict):
    """The model is loaded: what it is, where it runs, its labels and their colours (one colour
    per label, the same on every page), and the window and hop of the live streams, in
    seconds."""

    ready: Literal[True]
    model: str
    trained: bool
    device: str
    half_precision: bool
    precision: str
    labels: list[str]
    colours: dict[str, str]
    sample_rate: int
    window_s: float
    hop_s: float


class NotReadyAnswer(TypedDict):
    """The model is still loading (``error`` is None), or failed to load (why)."""

    ready: Literal[False]
    error: str | None


class HealthAnswer(TypedDict):
    """The process is alive. An ingest worker of ``serve --workers N`` adds its ``worker`` index,
    process id and live ``streams``; a cluster node its ``node`` id and live ``streams``."""

    status: Literal["ok"]
    worker: NotRequired[int]
    pid: NotRequired[int]
    streams: NotRequired[int]
    node: NotRequired[str]


class ErrorAnswer(TypedDict):
    """A refused request: what was wrong, and for some a short machine-readable ``code``."""

    error: str
    code: NotRequired[str]


#: The states ``GET /streams`` lists: a pulled stream's (:data:`~stream_server.types.StreamState`),
#: and ``lost``, a stream of a cluster that no node runs and that never ended.
ListedState = Literal["connecting", "live", "reconnecting", "ended", "failed", "lost"]


class StreamInfo(TypedDict):
    """One stream, live or stored, as ``Service.describe`` lists it.

    Every stream has its record's fields, its ``state``, ``summary`` (what it was: its main
    genre, each genre's share and its passages; ``null`` for a stream that never ended and has no
    outcome, such as a ``lost`` one), and the latest failed connection of a pulled source,
    ``last_error`` at ``last_error_at`` (unix seconds; kept after the source is back; ``null`` if
    none).

    A live stream adds its figures (``stream_time_s``, ``lag_s``, ``windows_computed``, ...), the
    current ``genre`` and ``confidence`` (``null`` before its first window) and, in a cluster, the
    ``node`` that runs it. An ended stream adds why it ended, ``reason`` (``null`` when not known:
    one ended by a previous run), its last ``genre``, ``confidence`` and ``title``, and its final
    counters; the figures are left out where not known. The list of keys may grow.
    """

    stream_id: str
    name: str
    kind: str
    source: str
    state: ListedState
    created_at: float
    ended_at: float | None
    sample_rate: int | None
    channels: int | None
    format: str | None
    summary: StreamSummary | None
    last_error: str | None
    last_error_at: float | None
    reason: NotRequired[str | None]
    genre: NotRequired[str | None]
    confidence: NotRequired[float | None]
    title: NotRequired[str | None]
    stream_time_s: NotRequired[float]
    lag_s: NotRequired[float | None]
    windows_computed: NotRequired[int]
    windows_skipped: NotRequired[int]
    overrun_samples: NotRequired[int]
    dropped: NotRequired[int]
    corrupt_packets: NotRequired[int]
    reconnects: NotRequired[int]
    node: NotRequired[str]


class StreamList(TypedDict):
    """Every live and stored stream."""

    streams: list[StreamInfo]


class TimelineSegment(TypedDict):
    """A stretch of one smoothed genre, in seconds of stream time."""

    start_s: float
    end_s: float
    genre: str
    confidence: float
    updates: int


class TrackTitle(TypedDict):
    """A title the source announced, and when (seconds of stream time, unix time)."""

    stream_time_s: float
    wall_time: float
    title: str


class TimelineAnswer(TypedDict):
    """A stream's genre timeline and the titles its source announced."""

    stream_id: str
    segments: list[TimelineSegment]
    titles: list[TrackTitle]


class DeletedAnswer(TypedDict):
    """The live stream was ended."""

    stream_id: str
    state: Literal["ended"]


class WebRTCOffer(TypedDict):
    """A browser's SDP offer with one audio track, and an optional stream name."""

    sdp: str
    type: Literal["offer"]
    name: NotRequired[str]


class WebRTCAnswer(TypedDict):
    """The server's SDP answer and the id of the stream the browser's audio feeds."""

    sdp: str
    type: Literal["answer"]
    stream_id: str


# -- TypedDicts to JSON Schema ---------------------------------------------------------------


def doc_text(doc: str | None) -> str:
    """A docstring as plain text: one paragraph per blank line, Sphinx roles and literals
    unwrapped (``:class:`X``` -> ``X``, double backquotes -> single); a ``:data:`` role naming a
    string constant of :mod:`stream_server.messages` becomes its value (``:data:`SPEECH```
    -> ```"speech"```)."""
    if not doc:
        return ""

    def constant(match: re.Match[str]) -> str:
        value = getattr(messages, match.group(1), None)
        return f'``"{value}"``' if isinstance(value, str) else match.group(1)

    text = re.sub(r":data:`~?(?:[\w.]*\.)?(\w+)`", constant, doc)
    text = re.sub(r":[a-z]+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)
    text = text.replace("``", "`")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(p for p in paragraphs if p)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return "string"


#: Fields the code types loosely (a ``to_dict()`` result as ``dict[str, object]``), by TypedDict
#: and key: the type whose JSON form they hold.
JSON_FORMS: dict[tuple[type, str], Any] = {
    (ClassifyAnswer, "summary"): StreamSummary,
}


def schema_of(tp: Any, components: dict[str, Json]) -> Json:
    """The JSON Schema of the type ``tp``. A TypedDict becomes a ``$ref`` to its entry in
    ``components`` (added there, with the entries of the types it holds); so does a dataclass,
    as its ``to_dict()`` writes it: every field and every property, all required."""
    if typing.is_typeddict(tp) or (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
        name = tp.__name__
        if name not in components:
            components[name] = {}  # placeholder: a type that refers to itself terminates
            components[name] = _object_schema(tp, components)
        return {"$ref": SCHEMA_PREFIX + name}
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any or tp is object:
        return {}
    if tp is type(None) or tp is None:
        return {"type": "null"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if origin is Literal:
        kinds = sorted({_json_type(a) for a in args})
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": list(args)}
    if origin in (list, tuple, Sequence):
        return {"type": "array", "items": schema_of(args[0] if args else Any, components)}
    if origin in (dict, Mapping):
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", "additionalProperties": schema_of(value, components)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [schema_of(a, components) for a in args]}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _fields(tp: type) -> list[tuple[str, Any, bool | None, str]]:
    """``(key, type, required, description)`` of a TypedDict's keys (``required`` None: as the
    TypedDict's totality says) or of a dataclass's properties then fields (all required; the
    descriptions from its ``Attributes:`` section and the properties' docstrings)."""
    hints = typing.get_type_hints(tp, include_extras=True)
    if not dataclasses.is_dataclass(tp):
        return [(key, hint, None, "") for key, hint in hints.items()]
    out: list[tuple[str, Any, bool | None, str]] = []
    for name, member in inspect.getmembers(tp, lambda m: isinstance(m, property)):
        if name.startswith("_") or member.fget is None:
            continue
        returns = typing.get_type_hints(member.fget).get("return", Any)
        out.append((name, returns, True, doc_text(member.fget.__doc__)))
    described = _attribute_docs(tp.__doc__)
    out += [
        (f.name, hints[f.name], True, described.get(f.name, ""))
        for f in dataclasses.fields(tp)
        if not f.name.startswith("_")
    ]
    return out


def _attribute_docs(doc: str | None) -> dict[str, str]:
    """A Google-style docstring's ``Attributes:`` entries, as plain text by name."""
    lines = inspect.cleandoc(doc or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:") + 1
    except StopIteration:
        return {}
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    indent: int | None = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth == 0:  # the next section
            break
        match = re.match(r"(\w+):\s*(.*)$", line.strip())
        if match and (indent is None or depth <= indent):
            indent = depth
            current = entries.setdefault(match.group(1), [match.group(2)])
        elif current is not None:
            current.append(line.strip())
    return {name: doc_text(" ".join(text)) for name, text in entries.items()}


def _summary_of(doc: str | None) -> str:
    """A docstring without its Google-style sections (``Attributes:``, ``Args:``, ...)."""
    text = inspect.cleandoc(doc or "")
    return re.split(r"^(?:Attributes|Args|Returns|Raises):\s*$", text, maxsplit=1, flags=re.M)[0]


def _object_schema(tp: type, components: dict[str, Json]) -> Json:
    total = getattr(tp, "__total__", True)
    properties: Json = {}
    required: list[str] = []
    for key, hint, needed, description in _fields(tp):
        origin = get_origin(hint)
        if origin is NotRequired:
            hint, needed = get_args(hint)[0], False
        elif origin is typing.Required:
            hint, needed = get_args(hint)[0], True
        elif needed is None:
            needed = total
        hint = JSON_FORMS.get((tp, key), hint)
        properties[key] = schema_of(hint, components)
        if description:
            properties[key] = {**properties[key], "description": description}
        if needed:
            required.append(key)
    schema: Json = {"type": "object", "properties": properties, "required": required}
    if description := doc_text(_summary_of(tp.__doc__)):
        schema["description"] = description
    return schema


# -- what each HTTP route does ---------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A query or path parameter."""

    name: str
    where: Literal["query", "path"]
    description: str
    schema: Json
    required: bool = False


@dataclass(frozen=True)
class Answer:
    """One status code's answer: ``content`` maps media types to a shape (None: any)."""

    description: str
    content: Mapping[str, Shape | None] = field(default_factory=dict)


def json_answer(description: str, shape: Shape = ErrorAnswer) -> Answer:
    return Answer(description, {"application/json": shape})


@dataclass(frozen=True)
class Op:
    """One method of one path: a summary, a longer description, its parameters, its request body
    (media type -> shape) and its answers by status code."""

    summary: str
    description: str = ""
    tag: str = "streams"
    params: tuple[Param, ...] = ()
    body: Mapping[str, Shape | None] | None = None
    body_description: str = ""
    answers: Mapping[int, Answer] = field(default_factory=dict)


STREAM_ID = Param("stream_id", "path", "The stream's id.", {"type": "string"}, required=True)

#: Every HTTP operation by ``(method, path)``; the paths are the routes' own templates.
OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/"): Op(
        "The landing page: what is running and where to go",
        "The model, its labels and colours, the number of streams (when the page may read "
        "them), and links to the dashboard, the microphone page and this API.",
        tag="pages",
        answers={200: Answer("An HTML page.", {"text/html": None})},
    ),
    ("GET", "/docs"): Op(
        "The API and WebSocket protocol as a page",
        "`/openapi.json` rendered as HTML.",
        tag="pages",
        answers={200: Answer("An HTML page.", {"text/html": None})},
    ),
    ("GET", "/openapi.json"): Op(
        "This description of the API (OpenAPI 3.1)",
        "Generated from the server's routing table; the WebSocket protocol is in `x-websockets`.",
        tag="pages",
        answers={200: Answer("The OpenAPI document.", {"application/json": {"type": "object"}})},
    ),
    ("GET", "/mic"): Op(
        "The browser microphone page",
        "Streams the browser's microphone over WebRTC and shows its live genre. A server with "
        "tokens takes one in the address's fragment: `/mic#token=...`.",
        tag="pages",
        answers={200: Answer("An HTML page.", {"text/html": None})},
    ),
    ("GET", "/favicon.ico"): Op(
        "The icon (ICO)",
        tag="pages",
        answers={200: Answer("An icon.", {"image/x-icon": None})},
    ),
    ("GET", "/favicon.svg"): Op(
        "The icon (SVG)",
        tag="pages",
        answers={200: Answer("An icon.", {"image/svg+xml": None})},
    ),
    ("GET", "/favicon.png"): Op(
        "The icon (PNG, 64x64)",
        tag="pages",
        answers={200: Answer("An icon.", {"image/png": None})},
    ),
    ("GET", "/health"): Op(
        "The process is alive",
        tag="status",
        answers={200: json_answer("Alive.", HealthAnswer)},
    ),
    ("GET", "/ready"): Op(
        "The model is loaded: model, device, labels and their colours, window and hop",
        tag="status",
        answers={
            200: json_answer("Ready.", ReadyAnswer),
            503: json_answer("The model is loading, or failed to load.", NotReadyAnswer),
        },
    ),
    ("GET", "/metrics"): Op(
        "Prometheus metrics",
        "Open to scrapers without a token when `[auth] open_metrics` is set.",
        tag="status",
        answers={200: Answer("Prometheus text format.", {"text/plain": None})},
    ),
    ("GET", "/streams"): Op(
        "Live and stored streams",
        answers={200: json_answer("Every stream this server knows, live and stored.", StreamList)},
    ),
    ("POST", "/streams"): Op(
        "Have the server pull a source",
        "The server fetches an http(s) URL (a radio stream, an HLS playlist, a file) or reads a "
        "file in its media folder, and classifies it as a live stream.",
        body={"application/json": messages.StreamRequest},
        body_description="The source and an optional stream name.",
        answers={
            201: json_answer("The stream was started.", StreamInfo),
            400: json_answer("The body is not a valid request."),
            403: json_answer("The source is not allowed, or does not exist."),
            503: json_answer("The server cannot take the stream now (loading, busy, stopping)."),
        },
    ),
    ("DELETE", "/streams/{stream_id}"): Op(
        "End a live stream",
        "A pulled stream stops fetching; a pushing client gets `stream.ended` and a close.",
        params=(STREAM_ID,),
        answers={
            200: json_answer("The stream was ended.", DeletedAnswer),
            404: json_answer("No live stream has that id."),
        },
    ),
    ("GET", "/streams/{stream_id}/timeline"): Op(
        "A stream's genre timeline",
        "Segments of one smoothed genre each, and the titles the source announced.",
        params=(
            STREAM_ID,
            Param(
                "format",
                "query",
                "`json` (default) or `csv` (segments only).",
                {"type": "string", "enum": ["json", "csv"], "default": "json"},
            ),
        ),
        answers={
            200: Answer("The timeline.", {"application/json": TimelineAnswer, "text/csv": None}),
            400: json_answer("An unknown format."),
            404: json_answer("No stream has that id."),
        },
    ),
    ("POST", "/classify"): Op(
        "Classify one audio file",
        "The whole file goes through the live windows and smoothing; the same bytes again get "
        "the kept answer (`cached`). The answer's `summary` sums up its timeline as "
        "`GET /streams` sums up a stream.",
        tag="files",
        body={
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            },
            "audio/*": {"type": "string", "format": "binary"},
            "application/octet-stream": {"type": "string", "format": "binary"},
        },
        body_description="A form with a `file` field, or the file itself as the body.",
        answers={
            200: json_answer("The file's genres, and its timeline summed up.", ClassifyAnswer),
            400: json_answer("An empty or malformed upload."),
            413: json_answer("The file is larger than `upload.max_bytes`."),
            415: json_answer("Not an audio file the server can decode."),
            422: json_answer("Damaged, truncated, or longer than `upload.max_duration_s`."),
            503: json_answer("The model is loading, or the server is stopping."),
        },
    ),
    ("POST", "/webrtc/offer"): Op(
        "Stream a browser's audio over WebRTC",
        "The page sends its SDP offer and gets the answer and its stream's id; the audio then "
        "flows over the peer connection. 501 on a server installed without the `webrtc` extra.",
        tag="pages",
        body={"application/json": WebRTCOffer},
        body_description="The offer.",
        answers={
            200: json_answer("The answer.", WebRTCAnswer),
            400: json_answer("Not a valid audio offer."),
            413: json_answer("The offer is too large."),
            501: json_answer("The `webrtc` extra is not installed."),
            503: json_answer("The server cannot take the stream now."),
        },
    ),
    ("POST", "/auth/ticket"): Op(
        "Trade a bearer token for a short-lived browser ticket",
        "A browser cannot set headers on a WebSocket: it passes the ticket as `?ticket=` "
        "instead. The ticket carries the token's scopes and expires after `[auth] ticket_s`.",
        tag="auth",
        answers={
            200: json_answer("A ticket.", TicketAnswer),
            401: json_answer("No valid bearer token."),
            404: json_answer("No tokens are configured: nothing needs a ticket."),
        },
    ),
}

#: Paths the guard itself answers (no route of the app serves them).
GUARD_PATHS = frozenset({"/auth/ticket"})


# -- the WebSockets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Socket:
    """One WebSocket endpoint: what it is for, its query parameters and its messages each way
    (TypedDicts of :mod:`stream_server.messages`), and the binary frames the client sends."""

    summary: str
    description: str
    params: tuple[Param, ...]
    sends: tuple[type, ...]
    receives: tuple[type, ...]
    binary: str = ""


TICKET = Param(
    "ticket",
    "query",
    "A browser ticket from `POST /auth/ticket`, where a token is needed and the client cannot "
    "send `Authorization: Bearer`.",
    {"type": "string"},
)

#: The server's messages: every member of :data:`~stream_server.messages.ServerMessage`.
SERVER_MESSAGES: tuple[type, ...] = get_args(messages.ServerMessage)

SOCKETS: dict[str, Socket] = {
    "/ws/ingest": Socket(
        "Push PCM audio and get the stream's messages back",
        "Send `start` first (within `server.start_timeout_s`), then binary frames of "
        "interleaved PCM in the announced format, rate and channels (each at most "
        "`server.max_frame_bytes`), then `stop`. The server answers `start` with "
        "`stream.started`, and `stop` with `stream.ended` and a close (1000). Genre messages "
        "are published on `/ws/updates`. A protocol error is answered with an `error` message, "
        "then a close whose code says why. A stream ended elsewhere (`DELETE /streams/{id}`, "
        "server stop) gets `stream.ended` and a close (1000).",
        params=(TICKET,),
        sends=get_args(messages.ClientMessage),
        receives=(messages.StreamStarted, messages.StreamEnded, messages.ErrorMessage),
        binary="Interleaved PCM samples in the `format` of `start` (`s16le` or `f32le`).",
    ),
    "/ws/updates": Socket(
        "Every published message, live",
        "Each message carries `seq`, strictly increasing server-wide. After a dropped "
        "connection, reconnect with `?since=` the last `seq` seen: the kept messages after it "
        "come first (an `error` with code `resume_gap` says when some are no longer kept). A "
        "subscriber that falls too far behind is closed with 1013.",
        params=(
            Param(
                "stream_id",
                "query",
                "Only this stream's messages (default: every stream's).",
                {"type": "string"},
            ),
            Param(
                "since",
                "query",
                "Replay the kept messages after this `seq` first (0: from the oldest kept).",
                {"type": "integer"},
            ),
            TICKET,
        ),
        sends=(),
        receives=SERVER_MESSAGES,
    ),
}

#: The close codes the server ends a WebSocket with, and when.
CLOSE_CODES: dict[int, str] = {
    1000: "Normal end: after `stop`, or the stream was ended elsewhere.",
    1003: "The announced audio format (sample format, rate, channels) is not supported.",
    1007: "Invalid data: a message that is not JSON, or text that breaks the rules of names and "
    "sources (control characters, too long).",
    1008: "The protocol was broken (a frame before `start`, `start` twice, an unknown message, "
    "no `start` in time), or the guard refused the handshake where it could not answer with "
    "an HTTP status.",
    1009: "A frame larger than `server.max_frame_bytes`.",
    1011: "The server could not store the stream, or read it back.",
    1012: "The server is stopping.",
    1013: "Try again later: the model is loading, the server is at its stream limit, or (on "
    "`/ws/updates`) the subscriber fell too far behind and should reconnect with `?since=`.",
}

#: The ``code`` of an ``error`` message, and what it means.
ERROR_CODES: dict[str, str] = {
    "protocol": "The protocol was broken (see the message).",
    "start_timeout": "No `start` message in time.",
    "unsupported_format": "The announced audio format is not supported.",
    "invalid_json": "A message that is not a JSON object.",
    "invalid_text": "A name or source with forbidden characters, or too long.",
    "frame_too_large": "A frame larger than `server.max_frame_bytes`.",
    "not_ready": "The model is still loading.",
    "busy": "The server or this client is at its stream limit.",
    "stopping": "The server is stopping.",
    "storage": "The stream could not be stored, or read back.",
    "inference": "A window of this stream could not be classified.",
    "resume_gap": "Some messages after `since` are no longer kept; the oldest kept follow.",
}


# -- the document ----------------------------------------------------------------------------

BEARER = "bearer"


def _param(p: Param) -> Json:
    return {
        "name": p.name,
        "in": p.where,
        "description": p.description,
        "required": p.required or p.where == "path",
        "schema": p.schema,
    }


def _content(content: Mapping[str, Shape | None], components: dict[str, Json]) -> Json:
    out: Json = {}
    for media, shape in content.items():
        if shape is None:
            out[media] = {}
        elif isinstance(shape, dict):
            out[media] = {"schema": shape}
        else:
            out[media] = {"schema": schema_of(shape, components)}
    return out


def _operation(
    method: str,
    path: str,
    op: Op | None,
    endpoint: Callable[..., Any] | None,
    scope: Scope | None,
    guarded: bool,
    json_body: bool,
    components: dict[str, Json],
) -> Json:
    if op is None:
        summary = doc_text(getattr(endpoint, "__doc__", None)).split("\n")[0]
        return {
            "summary": summary or f"{method} {path}",
            "responses": {"default": {"description": "Not described."}},
            "x-undocumented": True,
        }
    out: Json = {
        "summary": op.summary,
        "operationId": _operation_id(method, path),
        "tags": [op.tag],
    }
    if op.description:
        out["description"] = op.description
    if op.params:
        out["parameters"] = [_param(p) for p in op.params]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "description": op.body_description,
            "content": _content(op.body, components),
        }
    answers: Json = {}
    for status, answer in sorted(op.answers.items()):
        item: Json = {"description": answer.description}
        if answer.content:
            item["content"] = _content(answer.content, components)
        answers[str(status)] = item
    error = {"application/json": {"schema": schema_of(ErrorAnswer, components)}}
    if json_body:
        answers.setdefault(
            "415", {"description": "The body was not sent as application/json.", "content": error}
        )
    out["x-scope"] = scope
    if path in GUARD_PATHS:  # any valid token, whatever its scopes
        out["x-scope"] = None
        out["x-any-token"] = True
        if guarded:
            out["security"] = [{BEARER: []}]
    elif scope is not None and guarded:
        out["security"] = [{BEARER: []}]
        answers.setdefault("401", {"description": "No valid token.", "content": error})
        answers.setdefault(
            "403", {"description": f"The token lacks the `{scope}` scope.", "content": error}
        )
    elif guarded:
        out["security"] = []
    out["responses"] = dict(sorted(answers.items()))
    return out


def _operation_id(method: str, path: str) -> str:
    words = re.findall(r"[a-z0-9]+", path.lower()) or ["root"]
    return "_".join([method.lower(), *words])


def _socket(
    path: str, sock: Socket | None, scope: Scope | None, components: dict[str, Json]
) -> Json:
    if sock is None:
        return {"summary": path, "x-undocumented": True}
    return {
        "summary": sock.summary,
        "description": sock.description,
        "x-scope": scope,
        "parameters": [_param(p) for p in sock.params],
        "client_messages": [schema_of(t, components) for t in sock.sends],
        "client_binary": sock.binary or None,
        "server_messages": [schema_of(t, components) for t in sock.receives],
    }


def _routes(routes: Iterable[BaseRoute]) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """``(method, path, endpoint)`` of every HTTP route (HEAD left out: it follows GET) and
    the paths of the WebSocket routes."""
    http: list[tuple[str, str, Any]] = []
    sockets: list[str] = []
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    http.append((method, route.path, route.endpoint))
        elif isinstance(route, WebSocketRoute):
            sockets.append(route.path)
    return http, sockets


def openapi_schema(
    routes: Iterable[BaseRoute],
    *,
    required: Callable[[str, str], Scope | None],
    guarded: bool,
    json_paths: Iterable[str] = (),
    version: str = "",
) -> Json:
    """The OpenAPI 3.1 document of an app's ``routes``.

    ``required(method, path)`` is the scope a request needs (the guard's rule); ``guarded``:
    tokens are configured, so those routes list the bearer security and their 401 and 403;
    ``json_paths``: the POST routes the guard takes JSON on only (415 otherwise).
    """
    components: dict[str, Json] = {}
    paths: dict[str, Json] = {}
    http, socket_paths = _routes(routes)
    guard_ops = [(m, p, None) for (m, p) in OPERATIONS if p in GUARD_PATHS]
    json_set = frozenset(json_paths)
    for method, path, endpoint in [*http, *guard_ops]:
        item = paths.setdefault(path, {})
        template = re.sub(r"\{(\w+)(?::\w+)?\}", r"{\1}", path)
        item[method.lower()] = _operation(
            method,
            template,
            OPERATIONS.get((method, path)),
            endpoint,
            required(method, _example_path(path)),
            guarded,
            method == "POST" and path in json_set,
            components,
        )
    sockets = {
        path: _socket(path, SOCKETS.get(path), required("GET", path), components)
        for path in socket_paths
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "genrecast",
            "version": version or "unknown",
            "description": "Real-time music-genre monitor: live audio in, a live genre "
            "timeline out. The WebSocket protocol is in `x-websockets`.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {
                BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`GENRECAST_TOKEN` or a token of `[auth]`, with the scope "
                    "the operation names (`read`, `ingest` or `admin`).",
                }
            },
        },
        "tags": [
            {"name": "streams", "description": "Live and stored streams, their timelines."},
            {"name": "files", "description": "One file at a time."},
            {"name": "status", "description": "Is the server up, what does it run."},
            {"name": "pages", "description": "Pages for a browser, and what they use."},
            {"name": "auth", "description": "Tokens and browser tickets."},
        ],
        "x-websockets": {
            "paths": sockets,
            "close_codes": {str(code): text for code, text in sorted(CLOSE_CODES.items())},
            "error_codes": dict(ERROR_CODES),
        },
    }


def _example_path(path: str) -> str:
    """``path`` with each ``{param}`` filled in, as a request would name it."""
    return re.sub(r"\{[^}]+\}", "x", path)
