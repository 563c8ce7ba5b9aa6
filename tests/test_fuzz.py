"""Fuzzing a real server on loopback: ``/ws/ingest`` message sequences, ``POST /streams``
bodies, ``POST /classify`` bodies and ``POST /webrtc/offer`` SDP.

Every example must be answered below 500 (a WebSocket: the stream starts, or an ``error``
message comes before a close code that names the problem), leave no stream behind, log no
error or traceback, and leave the healthy stream that pushes music beside the fuzzing updating.
One server serves the whole module (:mod:`tests.helpers.fuzz`); the examples are derandomized,
so every run tries the same ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import json
import os
import random
import socket
import struct
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.websockets import websockets_sansio_impl
from websockets.asyncio import connection as websockets_connection
from websockets.exceptions import ConnectionClosed

from stream_server.config import config_from_dict
from stream_server.inference.model import LoadedModel
from stream_server.messages import close_reason
from stream_server.serve.auth import TOKEN_ENV
from tests.helpers.audio import encode_audio, music
from tests.helpers.constants import LABELS, TIMEOUT_S
from tests.helpers.fuzz import FuzzServer, due_windows, random_bytes
from tests.helpers.live import ws

#: Scales every example count (a deeper run: ``GENRECAST_FUZZ_SCALE=10``).
SCALE = float(os.environ.get("GENRECAST_FUZZ_SCALE", "1"))
#: Examples per test: the cheap routes many, the ones that decode audio or negotiate WebRTC fewer.
INGEST_EXAMPLES = round(4000 * SCALE)
STREAMS_EXAMPLES = round(3000 * SCALE)
CLASSIFY_EXAMPLES = round(1500 * SCALE)
WEBRTC_EXAMPLES = round(1500 * SCALE)
#: What the whole module must run (when every test runs).
TOTAL_EXAMPLES = 10_000

#: Limits of the fuzzed server, small enough that examples cross them.
MAX_FRAME_BYTES = 64 * 1024
MAX_UPLOAD_BYTES = 256 * 1024

#: Close codes a refused ingest connection may get (1000: the client's own ``stop``).
CLOSE_CODES = frozenset({1000, 1003, 1007, 1008, 1009, 1011, 1013})


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@pytest.fixture(scope="module")
def refusing_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def fuzz(
    tiny_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory, refusing_port: int
) -> Iterator[FuzzServer]:
    config = config_from_dict(
        {
            "server": {
                "port": 0,
                "log_level": "warning",
                "max_frame_bytes": MAX_FRAME_BYTES,
            },
            "engine": {"device": "cpu", "hop_s": 0.5, "max_wait_ms": 5.0},
            "smoothing": {"time_constant_s": 1.0, "min_dwell_s": 1.0},
            "storage": {"database": str(tmp_path_factory.mktemp("fuzz") / "timeline.db")},
            # The one source that may be pulled: a port that refuses, so nothing is fetched.
            "sources": {"allowed_hosts": [f"localhost:{refusing_port}"]},
            "upload": {"max_bytes": MAX_UPLOAD_BYTES},
            # Peers an example leaves behind would soon make every offer a 503.
            "webrtc": {"max_pending": 2},
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(TOKEN_ENV, raising=False)
        # WebSocket keepalive pings draw their payloads from the global ``random`` on the
        # server's thread, which Hypothesis would take for a strategy using it: they get a
        # generator of their own.
        for module in (websockets_sansio_impl, websockets_connection):
            patch.setattr(module, "random", random.Random(0))
        with FuzzServer(config, tiny_model) as server:
            yield server


# -- JSON text, including what Python's own encoder will not write --------------------------------


def abbreviated(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...<{len(text)} characters>"


class Compact:
    """A dataclass whose repr abbreviates long fields, so that a failing example of a
    megabyte stays readable (and Hypothesis does not warn about it)."""

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={abbreviated(repr(getattr(self, f.name)))}"
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        )
        return f"{type(self).__name__}({shown})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@dataclass(frozen=True, repr=False)
class Raw(Compact):
    """JSON text written as is: a number of thousands of digits, a broken token."""

    text: str


@dataclass(frozen=True, repr=False)
class Obj(Compact):
    """A JSON object as its key-value pairs, in order (a key may repeat)."""

    pairs: tuple[tuple[str, Any], ...]


class _SdpMark:
    def __repr__(self) -> str:
        return "SDP"


#: Where the mutated SDP goes in an offer body.
SDP = _SdpMark()
#: Stands for the port of the one allowed source (known once the server runs).
PORT_MARK = "PORTMARK"


def to_json(value: object, *, sdp: str = "", ascii_only: bool = True) -> str:
    """``value`` as JSON text (NaN and infinities as Python writes them)."""
    if isinstance(value, Raw):
        return value.text
    if value is SDP:
        return json.dumps(sdp, ensure_ascii=ascii_only)
    if isinstance(value, Obj):
        items = (
            f"{to_json(k, ascii_only=ascii_only)}: {to_json(v, sdp=sdp, ascii_only=ascii_only)}"
            for k, v in value.pairs
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v, sdp=sdp, ascii_only=ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encoded(value: object, *, sdp: str = "", raw_utf8: bool = False) -> str:
    """JSON text of ``value``; ``raw_utf8``: non-ASCII as itself where UTF-8 can carry it."""
    if raw_utf8:
        text = to_json(value, sdp=sdp, ascii_only=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return text
    return to_json(value, sdp=sdp)


# -- strategies shared by every route -------------------------------------------------------------

CONTROL_CHARS = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u2028", "\u2029"]


def spliced(middle: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda a, m, b: a + m + b, st.text(max_size=6), middle, st.text(max_size=6))


#: Strings a client may send: ordinary, with lone surrogates or control characters, long.
TEXT = st.one_of(
    st.text(max_size=24),
    spliced(st.integers(0xD800, 0xDFFF).map(chr)),
    spliced(st.sampled_from(CONTROL_CHARS)),
    st.integers(190, 260).map(lambda n: "x" * n),
    st.integers(190, 260).map(lambda n: "é" * n),
    st.integers(1000, 5000).map(lambda n: "y" * n),
    st.sampled_from(["", " ", "Ö1 Klassik", "ラジオ", "🎷 jazz", "\ufeff", "\u200b", "a\u0301"]),
)

#: Numbers as JSON text: out of range for a float, valid JSON or not.
ODD_NUMBERS = [
    "1e999", "-1e999", "1E400", "1e-400", "-0", "0.0", "44100.0", "4.41e4", "NaN", "Infinity",
    "-Infinity", "0x10", "+1", "01", ".5", "1.",
]  # fmt: skip
HUGE_NUMBERS = st.one_of(
    st.integers(4300, 12000).map(lambda n: Raw("9" * n)),
    st.integers(4300, 12000).map(lambda n: Raw("-1" + "0" * n)),
    st.integers(300, 2000).map(lambda n: Raw("1." + "5" * n)),
    st.sampled_from([Raw(text) for text in ODD_NUMBERS]),
)
NUMBERS = st.one_of(
    st.sampled_from(
        [0, 1, 2, -1, 8, 9, 7999, 8000, 8009, 44100, 384000, 384001, 2**31, 2**63, -(2**63)]
    ),
    st.integers(),
    st.floats(),
    HUGE_NUMBERS,
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
KEYS = st.one_of(
    st.sampled_from(["type", "sample_rate", "channels", "format", "name", "url", "sdp", ""]),
    TEXT,
)


def tuple_obj(pairs: list[tuple[str, Any]]) -> Obj:
    return Obj(tuple(pairs))


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(st.tuples(KEYS, inner), max_size=4).map(tuple_obj)
    ),
    max_leaves=8,
)


#: Text that is not JSON, or JSON nested deeper than any parser goes.
NOT_JSON = st.one_of(
    st.text(max_size=40),
    st.integers(1, 200_000).map(lambda n: "[" * n),
    st.integers(1, 50_000).map(lambda n: '{"a":' * n),
    st.sampled_from(["", "{", "}", "null", "[]", "{}", '{"type": "start"', "\x00", "\ufeff{}"]),
)


@st.composite
def objects_with(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], keep: int) -> Obj:
    """An object with each of ``fields`` (present ``keep`` times in 10), extra keys, any order."""
    pairs = [(k, draw(v)) for k, v in fields.items() if draw(st.integers(0, 9)) < keep]
    pairs += draw(st.lists(st.tuples(KEYS, JSON_VALUES), max_size=2))
    return Obj(tuple(draw(st.permutations(pairs))))


# -- /ws/ingest -----------------------------------------------------------------------------------

VALID_RATES = st.one_of(
    st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000, 96000, 384000]),
    st.integers(8000, 384000),
)
VALID_NAMES = st.text(
    alphabet=st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=200
)


@st.composite
def valid_starts(draw: st.DrawFn) -> Obj:
    """A ``start`` the server must accept."""
    pairs: list[tuple[str, Any]] = [
        ("type", "start"),
        ("sample_rate", draw(VALID_RATES)),
        ("channels", draw(st.integers(1, 8))),
        ("format", draw(st.sampled_from(["s16le", "f32le"]))),
    ]
    name = draw(st.none() | VALID_NAMES)
    if name is not None:
        pairs.append(("name", name))
    return Obj(tuple(draw(st.permutations(pairs))))


FUZZED_STARTS = objects_with(
    {
        "type": st.just("start"),
        "sample_rate": st.one_of(VALID_RATES, NUMBERS, JSON_VALUES),
        "channels": st.one_of(st.integers(1, 8), NUMBERS, JSON_VALUES),
        "format": st.one_of(st.sampled_from(["s16le", "f32le", "S16LE", "s24le", ""]), SCALARS),
        "name": st.one_of(TEXT, JSON_VALUES),
    },
    keep=8,
)
OTHER_MESSAGES = objects_with(
    {
        "type": st.one_of(
            st.sampled_from(["stop", "STOP", "start ", "Start", "ping", "error", "stream.started"]),
            JSON_VALUES,
        )
    },
    keep=9,
)


def pattern_frame(kind: str, n: int) -> bytes:
    """``n`` samples of one value: NaN, infinities and extremes as f32le, or s16le extremes."""
    if kind == "s16max":
        return np.full(n, 32767, "<i2").tobytes()
    if kind == "s16min":
        return np.full(n, -32768, "<i2").tobytes()
    value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 3e38, "tiny": 1e-45}[kind]
    return np.full(n, value, "<f4").tobytes()


BINARY_FRAMES = st.one_of(
    st.binary(max_size=2048),
    st.builds(random_bytes, st.integers(0, MAX_FRAME_BYTES + 16 * 1024), st.integers(0, 2**32)),
    st.builds(
        pattern_frame,
        st.sampled_from(["nan", "inf", "-inf", "huge", "tiny", "s16max", "s16min"]),
        st.integers(1, 16_000),
    ),
)


@dataclass(frozen=True, repr=False)
class Message(Compact):
    """One message to ``/ws/ingest``; ``as_text``: bytes sent as a text frame (bad UTF-8)."""

    data: str | bytes
    as_text: bool = False


def text_message(value: Any, raw_utf8: bool) -> Message:
    return Message(encoded(value, raw_utf8=raw_utf8))


TEXT_MESSAGES = st.one_of(
    st.builds(text_message, valid_starts(), st.booleans()),
    st.builds(text_message, FUZZED_STARTS, st.booleans()),
    st.builds(text_message, OTHER_MESSAGES, st.booleans()),
    st.builds(text_message, JSON_VALUES, st.booleans()),
    st.builds(Message, NOT_JSON),
    st.integers(MAX_FRAME_BYTES - 8, MAX_FRAME_BYTES + 8).map(lambda n: Message("z" * n)),
)
MESSAGES = st.one_of(
    TEXT_MESSAGES,
    BINARY_FRAMES.map(Message),
    BINARY_FRAMES.map(Message),
    st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b'{"type": "\xff"}']).map(
        lambda b: Message(b, as_text=True)
    ),
)


@dataclass(frozen=True, repr=False)
class IngestExample(Compact):
    """A connection to ``/ws/ingest``: the messages sent, then how it ends."""

    messages: tuple[Message, ...]
    #: ``stop``: a ``stop`` follows, then every reply is read until the server closes;
    #: ``close``: the client closes at once.
    ending: Literal["stop", "close"]
    #: The first message is a ``start`` the server must accept.
    starts: bool


#: Frames big enough that a few fill a window at a low rate: noise, NaN, infinities, extremes.
AUDIO_FRAMES = st.one_of(
    st.builds(random_bytes, st.integers(8_000, MAX_FRAME_BYTES), st.integers(0, 2**32)),
    st.builds(
        pattern_frame,
        st.sampled_from(["nan", "inf", "-inf", "huge", "tiny", "s16max", "s16min"]),
        st.integers(4_000, 16_000),
    ),
    st.binary(max_size=64),
)


@st.composite
def audio_examples(draw: st.DrawFn) -> IngestExample:
    """A ``start`` at a low rate, then enough audio (of any bytes) for windows to be due."""
    start = Obj(
        (
            ("type", "start"),
            ("sample_rate", draw(st.sampled_from([8000, 11025, 16000]))),
            ("channels", draw(st.integers(1, 2))),
            ("format", draw(st.sampled_from(["s16le", "f32le"]))),
        )
    )
    frames = draw(st.lists(AUDIO_FRAMES.map(Message), min_size=1, max_size=6))
    ending: Literal["stop", "close"] = draw(st.sampled_from(["stop", "stop", "close"]))
    return IngestExample((Message(to_json(start)), *frames), ending, starts=True)


@st.composite
def ingest_examples(draw: st.DrawFn) -> IngestExample:
    shape = draw(st.integers(0, 9))
    if shape < 2:
        return draw(audio_examples())
    starts = shape < 7
    first = [text_message(draw(valid_starts()), draw(st.booleans()))] if starts else []
    rest = draw(st.lists(MESSAGES, min_size=0 if starts else 1, max_size=8))
    ending: Literal["stop", "close"] = draw(st.sampled_from(["stop", "stop", "close"]))
    return IngestExample(tuple(first + rest), ending, starts)


async def ingest_example(fuzz: FuzzServer, example: IngestExample) -> str:
    replies: list[dict[str, Any]] = []
    async with ws(fuzz.server, "/ws/ingest") as conn:
        try:
            for message in example.messages:
                await conn.send(message.data, text=True if message.as_text else None)
            if example.ending == "close":
                return "ingest: closed by the client"
            await conn.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass  # the server closed first: its replies are still to be read
        with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012 (read until the close)
            while True:
                replies.append(json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S)))
    return check_ingest_replies(example, replies, closed.value)


def protocol_failures(example: IngestExample) -> set[int]:
    """The close codes the WebSocket layer itself may fail the connection with."""
    codes = set()
    for message in example.messages:
        if message.as_text:
            codes.add(1007)
        size = len(message.data.encode()) if isinstance(message.data, str) else len(message.data)
        if size > MAX_FRAME_BYTES:
            codes.add(1009)
    return codes


def check_ingest_replies(
    example: IngestExample, replies: list[dict[str, Any]], closed: ConnectionClosed
) -> str:
    """Checks the replies and the close; returns what happened, for the statistics."""
    kinds = [reply["type"] for reply in replies]
    assert closed.rcvd is not None, f"closed without a close frame (1006) after {replies}"
    code = closed.rcvd.code
    outcome = f"ingest: {'started' if 'stream.started' in kinds else 'refused'}, closed {code}"
    assert code in CLOSE_CODES, (code, replies)
    assert set(kinds) <= {"stream.started", "stream.ended", "error"}, replies
    assert kinds.count("stream.started") <= 1, replies
    if code in protocol_failures(example):
        # The WebSocket layer fails the connection at once, whatever the server was about to
        # answer: invalid UTF-8 in a text frame, a frame beyond its size limit.
        return outcome
    if example.starts:
        assert kinds[:1] == ["stream.started"], replies
    if code == 1000:
        assert kinds[-1:] == ["stream.ended"] and "stream.started" in kinds, replies
        ended = replies[-1]
        return outcome + (", windows computed" if ended["windows_computed"] else "")
    assert kinds[-1:] == ["error"], (code, replies)
    error = replies[-1]
    assert isinstance(error["code"], str) and isinstance(error["message"], str), error
    assert "Traceback" not in error["message"], error
    return outcome


@fuzz_settings(INGEST_EXAMPLES)
@given(example=ingest_examples())
def test_ingest_message_sequences(fuzz: FuzzServer, example: IngestExample) -> None:
    event(fuzz.example("ingest", ingest_example(fuzz, example)))


# -- POST /streams --------------------------------------------------------------------------------

SCHEMES = [
    "http", "https", "HTTP", "hTtPs", "file", "ftp", "gopher", "tcp", "udp", "unix", "concat",
    "subfile", "data", "rtmp", "rtsp", "pipe", "fd", "crypto", "hls", "cache", "async", "ws",
    "javascript", "x-unknown", "",
]  # fmt: skip
SEPARATORS = ["://", "://", ":", ":/", ":///", "//", ""]
#: Hosts as addresses (or names the hosts file answers): nothing is ever looked up elsewhere.
HOSTS = [
    "127.0.0.1", "localhost", "LOCALHOST", "[::1]", "0.0.0.0", "0", "127.1", "2130706433",
    "0x7f000001", "0177.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "169.254.170.2", "100.100.100.200", "[fd00:ec2::254]", "100.64.0.1", "224.0.0.1",
    "240.0.0.1", "255.255.255.255", "[::ffff:127.0.0.1]", "[::ffff:a9fe:a9fe]",
    "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "[::]", "[fe80::1]", "192.0.2.1", "198.51.100.7",
    "[", "[::1", "user:pass@localhost", f"user@localhost:{PORT_MARK}", "",
    f"localhost:{PORT_MARK}", f"LocalHost:{PORT_MARK}", f"127.0.0.1:{PORT_MARK}",
]  # fmt: skip
PORTS = ["", "", "", ":0", ":80", ":65535", ":65536", ":-1", ":x", ":" + "9" * 30]
PATHS = st.one_of(
    st.sampled_from(
        [
            "", "/", "/a.mp3", "/live.m3u8", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/shadow",
            "/%00", "?listen=1", "/x?y=1#f", "//double", "/a b", "/a\nb", "/\\x", "/\ud800",
        ]
    ),
    st.text(max_size=20).map(lambda t: "/" + t),
)  # fmt: skip
LOCAL_SOURCES = [
    "/etc/passwd", "/etc/shadow", "../../etc/passwd", "./config.toml", "~/.ssh/id_rsa",
    "/dev/zero", "/dev/stdin", "/proc/self/environ", "C:\\Windows\\win.ini", "\\\\srv\\share",
    "file:///etc/passwd", "file://localhost/etc/hosts", "file://evil/etc/passwd",
    "file:/etc/passwd", "FILE:///etc/passwd", "concat:/etc/passwd|/etc/hosts",
    "subfile,,start,0,end,100,,:/etc/passwd", "tcp://127.0.0.1:1234?listen=1",
    "unix:/tmp/x.sock", "gopher://127.0.0.1:6379/_SET%20a%201", "data:audio/wav;base64,UklGRg==",
    "pipe:0", "fd:0", "async:http://127.0.0.1/", "cache:http://127.0.0.1/",
    "hls+http://127.0.0.1/a.m3u8", " ", "\t", "",
]  # fmt: skip


@st.composite
def urls(draw: st.DrawFn) -> str:
    host = draw(st.sampled_from(HOSTS))
    port = "" if PORT_MARK in host else draw(st.sampled_from(PORTS))
    url = draw(st.sampled_from(SCHEMES)) + draw(st.sampled_from(SEPARATORS)) + host + port
    url += draw(PATHS)
    padding = draw(st.sampled_from(["", "", " ", "\t", "\n", "\u00a0"]))
    return padding + url + padding


#: The allowed source, written plainly: it must be accepted.
ALLOWED_URLS = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}:{PORT_MARK}{path}",
    st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["localhost", "LOCALHOST"]),
    st.sampled_from(["", "/", "/a.mp3", "/live?x=1"]),
)
SOURCES = st.one_of(urls(), urls(), st.sampled_from(LOCAL_SOURCES), TEXT)
CONTENT_TYPES = [
    "application/json", "application/json", "application/json", "application/json",
    "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", None,
]  # fmt: skip
#: ``SAME``: the server's own origin; others are foreign (or no Origin at all).
ORIGINS = [None] * 12 + ["SAME", "null", "http://evil.example", "file://", "x"]
HOST_HEADERS = [None] * 12 + ["localhost", "[::1]", "evil.example", "", "a b"]


@dataclass(frozen=True, repr=False)
class HttpExample(Compact):
    """A ``POST /streams``: its body (:data:`PORT_MARK` for the allowed port) and headers."""

    body: str
    content_type: str | None
    origin: str | None = None
    host: str | None = None
    #: The request is plain and valid: it must be accepted (2xx).
    valid: bool = False


@st.composite
def streams_examples(draw: st.DrawFn) -> HttpExample:
    shape = draw(st.sampled_from(["valid", "request", "request", "request", "value", "text"]))
    if shape == "valid":
        url = draw(ALLOWED_URLS)
        name = draw(st.none() | VALID_NAMES)
        body = {"url": url} if name is None else {"url": url, "name": name}
        return HttpExample(json.dumps(body), "application/json", valid=True)
    if shape == "request":
        fields = {"url": st.one_of(SOURCES, SOURCES, JSON_VALUES), "name": TEXT | JSON_VALUES}
        value: Any = draw(objects_with(fields, keep=8))
    elif shape == "value":
        value = draw(JSON_VALUES)
    else:
        value = Raw(draw(NOT_JSON))
    return HttpExample(
        encoded(value, raw_utf8=draw(st.booleans())),
        draw(st.sampled_from(CONTENT_TYPES)),
        draw(st.sampled_from(ORIGINS)),
        draw(st.sampled_from(HOST_HEADERS)),
    )


def request_headers(fuzz: FuzzServer, example: HttpExample) -> dict[str, str]:
    headers = {}
    if example.content_type is not None:
        headers["content-type"] = example.content_type
    if example.origin is not None:
        headers["origin"] = fuzz.server.http_url if example.origin == "SAME" else example.origin
    if example.host is not None:
        headers["host"] = example.host
    return headers


def check_status(
    reply: httpx.Response,
    route: str,
    *,
    valid: bool = False,
    origin: str | None = None,
    host: str | None = None,
) -> str:
    """Below 500 with a JSON ``error`` for a 4xx; 2xx for a ``valid`` request; 421 for a
    foreign ``Host``, else 403 for a foreign ``Origin``. Returns ``route: status``."""
    assert reply.status_code < 500, (reply.status_code, reply.text)
    if valid:
        assert reply.status_code in (200, 201), reply.text
    if host is not None and host not in ("localhost", "[::1]"):
        assert reply.status_code == 421, reply.text
    elif origin is not None and origin != "SAME":
        assert reply.status_code == 403, reply.text
    if reply.status_code >= 400 and reply.content:
        assert "Traceback" not in reply.text, reply.text
        assert isinstance(reply.json()["error"], str), reply.text
    return f"{route}: {reply.status_code}"


def allowed_source(url: str, port: int) -> bool:
    """Whether ``url`` names the one source the fuzzed server may pull."""
    parts = urlsplit(url.strip())
    return (
        parts.scheme.lower() in ("http", "https")
        and (parts.hostname or "") == "localhost"
        and parts.port == port
        and parts.username is None
    )


async def streams_example(fuzz: FuzzServer, example: HttpExample, port: int) -> str:
    body = example.body.replace(PORT_MARK, str(port))
    reply = await fuzz.http.post(
        "/streams", content=body.encode("utf-8"), headers=request_headers(fuzz, example)
    )
    outcome = check_status(
        reply, "streams", valid=example.valid, origin=example.origin, host=example.host
    )
    if reply.status_code != 201:
        return outcome
    created = reply.json()
    assert allowed_source(created["source"], port), created
    assert created["kind"] == "url", created
    deleted = await fuzz.http.delete(f"/streams/{created['stream_id']}")
    assert deleted.status_code in (200, 404), deleted.text
    return outcome


@fuzz_settings(STREAMS_EXAMPLES)
@given(example=streams_examples())
def test_post_streams_bodies(fuzz: FuzzServer, refusing_port: int, example: HttpExample) -> None:
    event(fuzz.example("streams", streams_example(fuzz, example, refusing_port)))


# -- POST /classify -------------------------------------------------------------------------------


def odd_wav() -> bytes:
    """A well-formed WAV whose format tag (0x1234) names no codec FFmpeg knows."""
    data = b"\x00\x01" * 4000
    fmt = struct.pack("<HHIIHH", 0x1234, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@functools.cache
def audio_files() -> dict[str, bytes]:
    """Small real files of each container the server decodes."""
    mono = music(1.0, 16000, channels=1, seed=5)
    stereo = music(1.0, 44100, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {
            "wav": encode_audio(folder / "a.wav", mono, 16000),
            "wav_short": encode_audio(folder / "b.wav", mono[:1600], 16000),
            "wav_f32": encode_audio(folder / "c.wav", stereo[:8000], 44100, codec="pcm_f32le"),
            "flac": encode_audio(folder / "d.flac", mono, 16000, codec="flac"),
            "mp3": encode_audio(folder / "e.mp3", stereo, 44100, codec="libmp3lame"),
            "ogg": encode_audio(
                folder / "f.ogg", music(1.0, 48000, seed=8), 48000,
                codec="libopus", container_format="ogg",
            ),
            "m4a": encode_audio(
                folder / "g.m4a", stereo, 44100, codec="aac", container_format="mp4"
            ),
        }  # fmt: skip
        files = {name: path.read_bytes() for name, path in paths.items()}
    files["odd_wav"] = odd_wav()
    return files


#: Offsets and widths of a canonical WAV header's fields (sizes, format tag, rate, ...).
WAV_FIELDS = [(4, 4), (16, 4), (20, 2), (22, 2), (24, 4), (28, 4), (32, 2), (34, 2), (40, 4)]
WAV_VALUES = [0, 1, 2, 3, 7, 0xFFFE, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 8000, 44100]


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip", "head", "truncate", "insert", "delete", "dup"]))
        n = len(out)
        if op == "flip" and n:
            at = draw(st.integers(0, n - 1))
            out[at] ^= draw(st.integers(1, 255))
        elif op == "head" and n >= 44:
            offset, width = draw(st.sampled_from(WAV_FIELDS))
            value = draw(st.sampled_from(WAV_VALUES)) & (256**width - 1)
            out[offset : offset + width] = value.to_bytes(width, "little")
        elif op == "truncate":
            del out[draw(st.integers(0, n)) :]
        elif op == "insert":
            at = draw(st.integers(0, n))
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete" and n:
            at = draw(st.integers(0, n - 1))
            del out[at : at + draw(st.integers(1, 256))]
        elif op == "dup" and n:
            at = draw(st.integers(0, n - 1))
            out[at:at] = out[at : at + draw(st.integers(1, 4096))]
    return bytes(out)


@st.composite
def upload_bytes(draw: st.DrawFn) -> tuple[str, bytes]:
    """A file to upload: ``(what it is, its bytes)``."""
    files = audio_files()
    name = draw(st.sampled_from(sorted(files)))
    kind = draw(st.sampled_from(["intact", "mutated", "mutated", "mutated", "spliced", "random"]))
    if kind == "intact":
        return name, files[name]
    if kind == "mutated":
        return name, draw(mutated(files[name]))
    if kind == "spliced":
        other = files[draw(st.sampled_from(sorted(files)))]
        cut = draw(st.integers(0, len(files[name])))
        return name, files[name][:cut] + other[draw(st.integers(0, len(other))) :]
    size = draw(st.sampled_from([0, 1, 4, 44, 512, 4096, MAX_UPLOAD_BYTES + 1]))
    return "random", random_bytes(size, draw(st.integers(0, 2**32)))


UPLOAD_TYPES = [
    "audio/wav", "audio/x-wav", "audio/mpeg", "audio/ogg", "audio/flac", "audio/mp4",
    "application/octet-stream", "application/ogg", "video/mp4", "AUDIO/WAV; rate=1", "audio/",
]  # fmt: skip
NON_AUDIO_TYPES = ["text/plain", "application/json", "image/png", "", None, "multipart/mixed"]


def multipart(data: bytes, shape: str, filename: str) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body holding ``data`` and its ``Content-Type``, well formed
    or broken in the way ``shape`` names."""
    boundary = "fuzzboundary"
    name = "other" if shape == "wrong_field" else "file"
    disposition = f'form-data; name="{name}"'
    if shape != "no_filename":
        disposition += f'; filename="{filename}"'
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: audio/wav\r\n\r\n"
    part = head.encode("utf-8", "surrogatepass") + data + b"\r\n"
    parts = [part]
    if shape == "two_files":
        parts.append(part)
    if shape == "many_fields":
        parts += [
            f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n'.encode()
            for i in range(20)
        ]
    body = b"".join(parts)
    if shape != "unterminated":
        body += f"--{boundary}--\r\n".encode()
    declared = "otherboundary" if shape == "wrong_boundary" else boundary
    if shape == "no_boundary":
        return body, "multipart/form-data"
    return body, f"multipart/form-data; boundary={declared}"


MULTIPART_SHAPES = [
    "ok", "ok", "wrong_field", "no_filename", "two_files", "many_fields", "unterminated",
    "wrong_boundary", "no_boundary",
]  # fmt: skip


@dataclass(frozen=True, repr=False)
class UploadExample(Compact):
    """A ``POST /classify``: ``what`` file the body was made from, the body and its type."""

    what: str
    body: bytes
    content_type: str | None
    query: str
    #: An intact file of a known container, sent plainly: it must be classified.
    valid: bool = False


@st.composite
def classify_examples(draw: st.DrawFn) -> UploadExample:
    what, data = draw(upload_bytes())
    query = draw(st.sampled_from(["", "", "?name=a.wav", "?name=%00", "?name=%ED%A0%80"]))
    wrapping = draw(st.sampled_from(["raw", "raw", "raw", "multipart", "other"]))
    if wrapping == "multipart":
        shape = draw(st.sampled_from(MULTIPART_SHAPES))
        body, content_type = multipart(data, shape, draw(TEXT.filter(lambda t: '"' not in t)))
        return UploadExample(what, body, content_type, query)
    if wrapping == "other":
        return UploadExample(what, data, draw(st.sampled_from(NON_AUDIO_TYPES)), query)
    content_type = draw(st.sampled_from(UPLOAD_TYPES))
    valid = data == audio_files().get(what) and what != "odd_wav" and content_type != "audio/"
    return UploadExample(what, data, content_type, query, valid)


async def classify_example(fuzz: FuzzServer, example: UploadExample) -> str:
    headers = {} if example.content_type is None else {"content-type": example.content_type}
    reply = await fuzz.http.post("/classify" + example.query, content=example.body, headers=headers)
    outcome = check_status(reply, "classify", valid=example.valid)
    if reply.status_code == 200:
        result = reply.json()
        assert result["genre"] in LABELS, result
        assert result["duration_s"] > 0, result
    return outcome


@fuzz_settings(CLASSIFY_EXAMPLES)
@given(example=classify_examples())
def test_post_classify_bodies(fuzz: FuzzServer, example: UploadExample) -> None:
    event(fuzz.example("classify", classify_example(fuzz, example), listing=False))


# -- POST /webrtc/offer ---------------------------------------------------------------------------

#: Addresses an inserted ICE candidate may name: loopback or unspecified, never another host.
CANDIDATE_ADDRESSES = ["127.0.0.1", "127.0.0.2", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1"]
WORDS = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "9", "111", "x", "65536", "9" * 25, "opus", "audio"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12),
)


def line(*parts: str) -> str:
    return "".join(parts)


ATTRIBUTES = [
    "a=ice-ufrag:", "a=ice-pwd:", "a=mid:", "a=group:BUNDLE ", "a=msid:", "a=ssrc:", "a=extmap:",
    "a=rtcp:", "a=rtcp-fb:", "a=ice-options:", "a=max-message-size:", "a=sctp-port:", "b=AS:",
    "o=", "s=", "t=", "v=",
]  # fmt: skip
LINE_PREFIXES = [
    "a=candidate:", "a=fingerprint:", "m=", "a=rtpmap:", "a=ice-", "a=setup:", "a=mid:", "c=",
    "a=group:", "a=ssrc", "a=msid", "a=rtcp", "v=", "o=", "t=",
]  # fmt: skip
SDP_LINES = st.one_of(
    st.builds(
        line,
        st.just("m="),
        st.sampled_from(["audio", "video", "application", "AUDIO", ""]),
        st.just(" "),
        WORDS,
        st.just(" "),
        st.sampled_from(["UDP/TLS/RTP/SAVPF", "RTP/AVP", "UDP/DTLS/SCTP", "TCP/TLS/RTP/SAVPF", ""]),
        st.just(" "),
        WORDS,
    ),
    st.builds(line, st.just("c=IN "), st.sampled_from(["IP4 0.0.0.0", "IP6 ::", "", "IP4 x"])),
    st.builds(
        line,
        st.just("a=rtpmap:"),
        WORDS,
        st.just(" "),
        st.sampled_from(["opus", "OPUS", "PCMU", "x", ""]),
        st.just("/"),
        WORDS,
        st.sampled_from(["", "/2", "/0", "/x", "/-1"]),
    ),
    st.builds(line, st.just("a=fmtp:"), WORDS, st.just(" "), WORDS),
    st.builds(
        line,
        st.just("a=fingerprint:"),
        st.sampled_from(["sha-256", "sha-1", "md5", "SHA-256", "x", ""]),
        st.just(" "),
        st.sampled_from([":".join(["AB"] * 32), "", "zz", ":".join(["AB"] * 20)]) | WORDS,
    ),
    st.builds(
        line,
        st.just("a=setup:"),
        st.sampled_from(["actpass", "active", "passive", "holdconn", "", "x"]),
    ),
    st.builds(
        line,
        st.just("a=candidate:"),
        WORDS,
        st.just(" "),
        st.sampled_from(["1", "2", "0", "-1", "x", "9" * 25]),
        st.just(" "),
        st.sampled_from(["udp", "UDP", "tcp", "x", ""]),
        st.just(" "),
        st.sampled_from(["2130706431", "0", "-1", "x", str(2**64)]),
        st.just(" "),
        st.sampled_from(CANDIDATE_ADDRESSES),
        st.just(" "),
        st.sampled_from(["9", "0", "65535", "65536", "-1", "x"]),
        st.just(" typ "),
        st.sampled_from(["host", "srflx", "relay", "prflx", "x", ""]),
        st.sampled_from(["", " raddr 0.0.0.0 rport 9", " tcptype active", " generation 0", " x"]),
    ),
    st.builds(
        line,
        st.sampled_from(ATTRIBUTES),
        WORDS,
    ),
    st.sampled_from(
        ["a=rtcp-mux", "a=sendrecv", "a=recvonly", "a=inactive", "a=end-of-candidates", ""]
    ),
    TEXT.filter(lambda t: "candidate" not in t),
)

#: Edits of one line of SDP: ``(how, where, what)``.
MANGLES = st.tuples(
    st.sampled_from(["truncate", "replace", "insert", "value", "upper", "nul"]),
    st.integers(0, 200),
    WORDS | TEXT.filter(lambda t: "candidate" not in t),
)
SDP_OPS = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 10**6)),
    st.tuples(st.just("dup"), st.integers(0, 10**6)),
    st.tuples(st.just("swap"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("mangle"), st.integers(0, 10**6), MANGLES),
    st.tuples(st.just("insert"), st.integers(0, 10**6), SDP_LINES),
    st.tuples(
        st.just("drop_all"),
        st.sampled_from(LINE_PREFIXES),
    ),
)


def mangle_line(text: str, how: str, at: int, what: str) -> str:
    at %= len(text) + 1
    if how == "truncate":
        return text[:at]
    if how == "replace":
        return text[:at] + what[:1] + text[at + 1 :]
    if how == "insert":
        return text[:at] + what + text[at:]
    if how == "value":
        for sep in (":", " ", "="):
            if sep in text:
                return text.split(sep, 1)[0] + sep + what
        return text + what
    if how == "upper":
        return text.upper()
    return text[:at] + "\x00" + text[at:]


def mutate_sdp(sdp: str, ops: tuple[Any, ...], eol: str) -> str:
    """``sdp`` with ``ops`` applied line by line. Candidate lines are never edited (an edited
    address could name another host); inserted ones name loopback or unspecified addresses."""
    lines = [text for text in sdp.split("\r\n") if text]
    for op in ops:
        kind = op[0]
        if kind == "drop_all":
            lines = [text for text in lines if not text.startswith(op[1])]
            continue
        if kind == "insert":
            lines.insert(op[1] % (len(lines) + 1), op[2])
            continue
        if not lines:
            continue
        i = op[1] % len(lines)
        if kind == "drop":
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "swap":
            j = op[2] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "mangle" and not lines[i].startswith("a=candidate:"):
            how, at, what = op[2]
            lines[i] = mangle_line(lines[i], how, at, what)
    return eol.join(lines) + eol


@dataclass(frozen=True, repr=False)
class OfferExample(Compact):
    """A ``POST /webrtc/offer``: edits of the real offer's SDP, its line ends, the body around
    it and its type."""

    ops: tuple[Any, ...]
    eol: str
    #: The JSON body, with :data:`SDP` where the mutated SDP goes.
    envelope: Any
    content_type: str | None
    raw_utf8: bool = False


OFFER_ENVELOPES = st.one_of(
    st.just(Obj((("type", "offer"), ("sdp", SDP)))),
    st.just(Obj((("sdp", SDP), ("type", "offer")))),
    st.builds(lambda name: Obj((("type", "offer"), ("sdp", SDP), ("name", name))), TEXT),
    objects_with(
        {
            "type": st.sampled_from(["offer", "answer", "OFFER", "pranswer"]) | JSON_VALUES,
            "sdp": st.just(SDP) | JSON_VALUES,
            "name": TEXT | JSON_VALUES,
        },
        keep=8,
    ),
    JSON_VALUES,
    NOT_JSON.map(Raw),
    st.integers(64 * 1024 - 100, 64 * 1024 + 100).map(
        lambda n: Obj((("type", "offer"), ("sdp", SDP), ("pad", "p" * n)))
    ),
)


@st.composite
def offer_examples(draw: st.DrawFn) -> OfferExample:
    return OfferExample(
        ops=tuple(draw(st.lists(SDP_OPS, max_size=5))),
        eol=draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r"])),
        envelope=draw(OFFER_ENVELOPES),
        content_type=draw(
            st.sampled_from(["application/json"] * 8 + ["text/plain", None, "application/sdp"])
        ),
        raw_utf8=draw(st.booleans()),
    )


async def offer_example(fuzz: FuzzServer, base_sdp: str, example: OfferExample) -> str:
    sdp = mutate_sdp(base_sdp, example.ops, example.eol)
    body = encoded(example.envelope, sdp=sdp, raw_utf8=example.raw_utf8)
    headers = {} if example.content_type is None else {"content-type": example.content_type}
    reply = await fuzz.http.post("/webrtc/offer", content=body.encode("utf-8"), headers=headers)
    outcome = check_status(reply, "webrtc")
    if reply.status_code != 200:
        return outcome
    answer = reply.json()
    assert answer["type"] == "answer" and "m=audio" in answer["sdp"], answer
    deleted = await fuzz.http.delete(f"/streams/{answer['stream_id']}")
    assert deleted.status_code in (200, 404), deleted.text
    return outcome


@pytest.fixture(scope="module")
def base_sdp(fuzz: FuzzServer) -> str:
    """A real aiortc offer (its loopback candidates only)."""
    pytest.importorskip("aiortc", reason="the webrtc extra is not installed")
    from tests.helpers.webrtc import client_peer, offer_json, only_loopback

    async def make() -> str:
        peer = client_peer()
        try:
            return only_loopback((await offer_json(peer))["sdp"])
        finally:
            await peer.close()

    return fuzz.run(make())


@fuzz_settings(WEBRTC_EXAMPLES)
@given(example=offer_examples())
def test_webrtc_offer_sdp(fuzz: FuzzServer, base_sdp: str, example: OfferExample) -> None:
    event(fuzz.example("webrtc", offer_example(fuzz, base_sdp, example)))


# -- what the fuzzing found ----------------------------------------------------------------------


def test_close_reasons_fit_a_close_frame() -> None:
    assert close_reason("x" * 200) == "x" * 123
    cut = close_reason("unknown message type " + "é" * 100)
    assert len(cut.encode()) <= 123 and cut.endswith("é")
    assert close_reason("a\ud800b") == "a?b"


def test_an_error_naming_non_ascii_text_still_closes_cleanly(fuzz: FuzzServer) -> None:
    """The close reason is the error's text: 120 characters of it were up to 240 bytes of
    UTF-8, more than a close frame holds, so the close failed and the client saw the connection
    drop (1006) with no reason."""

    async def scenario() -> None:
        async with ws(fuzz.server, "/ws/ingest") as conn:
            await conn.send(json.dumps({"type": "é" * 100}))
            reply = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
            assert reply["type"] == "error" and reply["code"] == "protocol", reply
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason.startswith("unknown message type")

    fuzz.run(scenario())
    fuzz.run(fuzz.settle())
    fuzz.check_log()


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One client frame (FIN set, masked with a zero key), ``payload`` under 126 bytes."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


async def raw_ingest(fuzz: FuzzServer, frames: bytes) -> bytes:
    """Open ``/ws/ingest`` over a plain socket, write ``frames`` in one piece and return
    everything the server sends until it closes the connection."""
    reader, writer = await asyncio.open_connection(fuzz.server.host, fuzz.server.port)
    try:
        writer.write(
            b"GET /ws/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 101"), head
        writer.write(frames)
        return await asyncio.wait_for(reader.read(), TIMEOUT_S)
    finally:
        writer.close()


@pytest.mark.parametrize("then_close", [False, True], ids=["alone", "with-close"])
def test_invalid_utf8_in_a_text_frame_logs_no_traceback(fuzz: FuzzServer, then_close: bool) -> None:
    """uvicorn closes the connection itself (1007) but logged a traceback at ERROR; with the
    client's close frame in the same read it failed once more sending its own close on a
    closing connection, and asyncio logged a second traceback."""
    frames = masked_frame(0x1, b"\xff")
    if then_close:
        frames += masked_frame(0x8, struct.pack("!H", 1000))
    received = fuzz.run(raw_ingest(fuzz, frames))
    if not then_close:
        assert received[:1] == b"\x88" and struct.unpack("!H", received[2:4]) == (1007,)
    fuzz.run(fuzz.settle())
    fuzz.check_log()


def test_an_unterminated_multipart_upload_leaves_no_file_open(fuzz: FuzzServer) -> None:
    """A form that ends inside its file part gave Starlette a part in no field, whose spooled
    file it never closed (a ResourceWarning when it was collected)."""
    body, content_type = multipart(audio_files()["wav"], "unterminated", "a.wav")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        reply = fuzz.run(
            fuzz.http.post("/classify", content=body, headers={"content-type": content_type})
        )
        gc.collect()
    assert reply.status_code == 400, reply.text
    assert "no 'file' field" in reply.json()["error"]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught
    fuzz.check_log()


# -- the healthy stream, after everything ---------------------------------------------------------


def test_the_healthy_stream_kept_updating(fuzz: FuzzServer) -> None:
    """Runs last: the stream that pushed music beside every example got every window it was
    due, none was lost on the way to its subscriber, and it never went ``STALE_S`` seconds
    without an update."""
    ran = dict(fuzz.examples)
    healthy = fuzz.finish_healthy()
    ended = healthy.ended
    assert ended is not None and ended["type"] == "stream.ended", ended
    assert healthy.ended_seen == ended
    due = due_windows(healthy, window_s=2.0, hop_s=0.5)
    assert ended["windows_computed"] + ended["windows_skipped"] == due, (ended, due)
    assert ended["windows_computed"] == len(healthy.updates), ended
    assert ended["windows_computed"] >= 0.9 * due, (ended, due)
    assert healthy.max_gap_s() <= TIMEOUT_S / 4
    print(
        f"fuzz examples: {ran}, healthy stream: {healthy.seconds_sent:.0f} s sent, "
        f"{ended['windows_computed']} of {due} windows computed, longest gap "
        f"{healthy.max_gap_s():.2f} s, warnings logged: {dict(fuzz.log.warnings)}"
    )
    if set(ran) == {"ingest", "streams", "classify", "webrtc"} and SCALE >= 1:
        assert sum(ran.values()) >= TOTAL_EXAMPLES, ran
