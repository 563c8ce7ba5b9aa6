"""What the command-line clients say: errors in words (no errno, no close code), the summary of a
stream, the labelled answers of ``classify`` and the columns of ``watch``. Pure: no server."""

from __future__ import annotations

import errno
import socket
from typing import Any, cast

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidMessage
from websockets.frames import Close

from stream_server.core.summary import summarize
from stream_server.core.timeline import Segment, segments_from_json
from stream_server.messages import ClassifyResult, ServerMessage, StreamEnded
from stream_server.serve.listen import cannot_listen
from stream_server.serve.upload import with_summary
from stream_server.tools.client import (
    close_words,
    error_words,
    format_classify_headline,
    format_ended,
    format_message,
    format_passages,
    format_shares,
    format_summary,
    no_server,
    percent,
    stream_failure,
    unreachable,
    watch_banner,
    watch_header,
)


def seg(start: float, end: float, genre: str, updates: int = 1) -> Segment:
    return Segment(start, end, genre, 0.8, updates)


# -- errors in words -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (1012, "the server is restarting"),
        (1008, "the server refused the connection (its policy, or the token)"),
        (1011, "the server hit an internal error (its log says why)"),
        (1013, "the server is overloaded; try again later"),
        (1001, "the server is going away (shutting down)"),
        (None, "the connection dropped (the server stopped, or the network failed)"),
        (4321, "the server closed the connection without saying why"),
        (2999, "the server closed the connection without saying why"),
    ],
)
def test_close_codes_in_words(code: int | None, words: str) -> None:
    assert close_words(code) == words
    assert str(code) not in close_words(code)


def test_the_servers_own_reason_wins_over_the_code() -> None:
    reason = "subscriber too slow; reconnect with ?since=SEQ"
    assert close_words(1013, reason) == reason
    assert close_words(1012, "  the server is stopping ") == "the server is stopping"


def test_closed_connections_in_words() -> None:
    restarting = ConnectionClosedError(Close(1012, ""), None)
    assert error_words(restarting) == "the server is restarting"
    slow = ConnectionClosedError(Close(1013, "subscriber too slow"), Close(1013, ""), True)
    assert error_words(slow) == "subscriber too slow"
    assert error_words(ConnectionClosedOK(None, None)) == close_words(None)
    reset = ConnectionClosedError(None, None)
    reset.__cause__ = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert error_words(reset) == "connection reset by the server"  # the cause says more


def oserror(number: int) -> OSError:
    return OSError(number, "strerror text")


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), "connection refused"),
        (oserror(errno.ECONNRESET), "connection reset by the server"),
        (oserror(errno.EHOSTUNREACH), "host unreachable"),
        (oserror(errno.ENETUNREACH), "network unreachable"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "host not found"),
        (TimeoutError(), "timed out"),
        (oserror(errno.ETIMEDOUT), "timed out"),
        # several addresses, several failures: asyncio joins their texts into one OSError
        (
            OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 9, 0, 0)"),
            "connection refused",
        ),
        (InvalidMessage("did not receive a valid HTTP response"), "no WebSocket"),
    ],
)
def test_os_errors_in_words(exc: BaseException, words: str) -> None:
    said = error_words(exc)
    assert words in said
    assert "Errno" not in said and "[" not in said


def test_errors_behind_httpx_errors_are_found() -> None:
    wrapped = httpx.ConnectError("All connection attempts failed")
    wrapped.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert error_words(wrapped) == "connection refused"
    # the text alone, as httpx gives it when the cause is gone
    assert error_words(httpx.ConnectError("[Errno -2] Name or service not known")) == (
        "host not found"
    )
    assert error_words(httpx.ReadTimeout("timed out")) == "timed out"


def test_unknown_errors_keep_their_text_without_errno() -> None:
    assert error_words(OSError(errno.ENOENT, "No such file or directory")) == (
        "no such file or directory"
    )
    assert error_words(RuntimeError("something odd")) == "something odd"


def test_unreachable_servers_are_named_with_the_reason() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    assert str(unreachable("http://127.0.0.1:9", refused)) == (
        "cannot reach the server at http://127.0.0.1:9: connection refused"
    )
    assert str(no_server("http://127.0.0.1:9", "connection refused")) == (
        "no genrecast server answers at http://127.0.0.1:9 (connection refused); is it running? "
        "start one with `genrecast serve`"
    )


def test_a_busy_port_is_said_in_words() -> None:
    busy = cannot_listen("127.0.0.1", 8000, OSError(errno.EADDRINUSE, "Address already in use"))
    assert str(busy) == (
        "port 8000 on 127.0.0.1 is already in use (another genrecast serve?); "
        "choose another with --port"
    )
    denied = cannot_listen("127.0.0.1", 80, OSError(errno.EACCES, "Permission denied"))
    assert "no permission to listen on port 80" in str(denied) and "--port" in str(denied)
    foreign = cannot_listen("10.9.9.9", 8000, OSError(errno.EADDRNOTAVAIL, "Cannot assign"))
    assert "10.9.9.9 is not an address of this machine" in str(foreign)
    assert "--host" in str(foreign)
    for error in (busy, denied, foreign):
        assert "Errno" not in str(error)


def test_a_pulled_streams_failure_in_the_servers_words() -> None:
    assert stream_failure({"state": "failed", "reason": "gave up"}) == "gave up"
    assert stream_failure({"reason": "gave up", "last_error": "connection refused"}) == (
        "gave up (last error: connection refused)"
    )
    said = "cannot connect to 127.0.0.1:1: connection refused"
    assert stream_failure({"reason": said, "last_error": said}) == said
    assert stream_failure({"last_error": "timed out"}) == "timed out"
    assert stream_failure({"state": "reconnecting"}) == ""


# -- summaries -----------------------------------------------------------------------------------


def test_shares_and_passages_of_a_stream() -> None:
    summary = summarize(
        [seg(0, 12.5, "rock", 25), seg(12.5, 18, "jazz", 11), seg(18, 20, "speech")]
    )
    assert format_shares(summary) == "rock 62 % (jazz 28 %, speech 10 %)"
    assert format_passages(summary) == "0.0-12.5 s rock · 12.5-18.0 s jazz · 18.0-20.0 s speech"
    assert format_summary(summary) == [
        "main genre: rock 62 % (jazz 28 %, speech 10 %)",
        "0.0-12.5 s rock · 12.5-18.0 s jazz · 18.0-20.0 s speech",
    ]


def test_long_summaries_are_cut_and_say_how_much_is_left() -> None:
    genres = ["rock", "jazz", "blues", "pop", "metal", "disco", "folk"]
    segments = [seg(i * 10.0, (i + 1) * 10.0, genres[i % len(genres)], 10) for i in range(30)]
    summary = summarize(segments)
    shares = format_shares(summary, most=2)
    assert shares.startswith(f"{summary.genre} ") and shares.endswith(", 4 more)")
    passages = format_passages(summary, most=3).split(" · ")
    assert passages == ["0.0-10.0 s rock", "10.0-20.0 s jazz", "20.0-30.0 s blues", "… 27 more"]


def test_tiny_shares_are_not_shown_as_zero() -> None:
    assert percent(0.004) == "<1 %"
    assert percent(0.0) == "0 %"
    assert percent(0.725) == "72 %" or percent(0.725) == "73 %"
    assert percent(1.0) == "100 %"


def test_an_empty_timeline_says_so() -> None:
    (line,) = format_summary(summarize([]))
    assert line.startswith("main genre: none")


def test_the_end_of_a_push() -> None:
    ended = StreamEnded(
        type="stream.ended",
        seq=9,
        stream_id="3f2a",
        reason="stopped by client",
        stream_time_s=30.0,
        wall_time=0.0,
        windows_computed=26,
        windows_skipped=0,
    )
    summary = summarize([seg(0, 24, "rock", 20), seg(24, 30, "jazz", 6)])
    assert format_ended("3f2a", 30.0, ended, summary) == [
        "stream 3f2a ended: 30.0 s of audio sent, 26 windows (0 skipped)",
        "main genre: rock 80 % (jazz 20 %)",
        "0.0-24.0 s rock · 24.0-30.0 s jazz",
    ]
    elsewhere = {**ended, "reason": "stopped by request"}
    (line,) = format_ended("3f2a", 12.0, cast(StreamEnded, elsewhere), None)
    assert line == (
        "stream 3f2a ended (stopped by request): 12.0 s of audio sent, 26 windows (0 skipped)"
    )


# -- classify's two answers ----------------------------------------------------------------------


def classify_result(windows: list[str], segments: list[Segment], genre: str) -> ClassifyResult:
    rows: list[dict[str, Any]] = [
        {"start_s": i, "end_s": i + 5.0, "top": [], "genre": g, "confidence": 0.5}
        for i, g in enumerate(windows)
    ]
    return cast(
        ClassifyResult,
        {
            "genre": genre,
            "confidence": 0.278,
            "windows": rows,
            "segments": [s.to_dict() for s in segments],
        },
    )


def test_classify_labels_the_mean_and_the_timeline() -> None:
    result = classify_result(["rock"] * 20, [seg(0, 24, "rock", 20)], "country")
    assert format_classify_headline(result) == [
        "whole file (mean of 20 windows): country 27.8 %",
        "timeline (smoothed): rock 0.0-24.0 s (100 %)",
        "  (they differ: the whole-file figure averages every window's probabilities, the "
        "timeline follows the smoothed genre from window to window)",
    ]


def test_classify_with_several_passages_and_speech() -> None:
    windows = ["speech"] * 4 + ["rock"] * 16
    segments = [seg(0, 8, "speech", 4), seg(8, 24, "rock", 16)]
    lines = format_classify_headline(classify_result(windows, segments, "rock"))
    assert lines == [
        "whole file (mean of 16 windows): rock 27.8 %",  # speech windows are not in the mean
        "timeline (smoothed): rock 67 % (speech 33 %)",
        "  0.0-8.0 s speech · 8.0-24.0 s rock",
    ]


def test_the_classify_answers_summary_is_its_timelines() -> None:
    segments = [seg(0, 8, "jazz", 4), seg(8, 24, "rock", 16)]
    result = classify_result(["jazz"] * 4 + ["rock"] * 16, segments, "jazz")
    answer = with_summary(result)
    assert answer["summary"] == summarize(segments).to_dict()
    assert answer["summary"]["genre"] == "rock" and answer["genre"] == "jazz"
    assert "summary" not in result  # a new object: a cached answer is not changed
    assert segments_from_json(answer["segments"]) == segments


# -- watch ---------------------------------------------------------------------------------------


def test_watch_says_what_it_watches_and_labels_its_columns() -> None:
    assert watch_banner("http://127.0.0.1:8000/", None, None) == (
        "genrecast watch: every stream on http://127.0.0.1:8000, from now on"
    )
    assert watch_banner("ws://h:1", "abc", 0) == (
        "genrecast watch: stream abc on http://h:1, replaying every message after seq 0"
    )
    header = watch_header()
    for label in ("seq", "time", "stream", "stream time", "genre", "confidence", "latency"):
        assert label in header
    update = cast(
        ServerMessage,
        {
            "type": "genre.update",
            "seq": 12,
            "stream_id": "3f2a9c0e11aa",
            "stream_time_s": 12.5,
            "window_start_s": 7.5,
            "wall_time": 0.0,
            "top": [{"label": "rock", "prob": 0.8}, {"label": "jazz", "prob": 0.1}],
            "smoothed": [],
            "genre": "rock",
            "confidence": 0.85,
            "latency_ms": 12.0,
        },
    )
    row = format_message(update)
    # every value starts under its label
    for label, value in (("stream time", "t="), ("genre", "rock"), ("confidence", "0.85")):
        assert row.index(value) == header.index(label), (label, row, header)
    assert row.startswith("[    12]") and " t=" in row and row.endswith("rock 0.80, jazz 0.10")


def test_watch_words_for_changes_and_ends() -> None:
    base = {"seq": 3, "stream_id": "s1", "stream_time_s": 5.0, "wall_time": 0.0}
    first = cast(
        ServerMessage,
        {**base, "type": "genre.change", "previous": None, "genre": "rock", "confidence": 0.9},
    )
    assert format_message(first).endswith("change: start -> rock")
    later = cast(ServerMessage, {**first, "previous": "jazz"})
    assert format_message(later).endswith("change: jazz -> rock")
    failed = cast(
        ServerMessage,
        {
            **base,
            "type": "stream.ended",
            "reason": "cannot connect to 127.0.0.1:1: connection refused",
            "windows_computed": 0,
            "windows_skipped": 0,
        },
    )
    assert format_message(failed).endswith(
        "ended: cannot connect to 127.0.0.1:1: connection refused; 0 windows (0 skipped)"
    )
    error = cast(ServerMessage, {"type": "error", "code": "resume_gap", "message": "gap"})
    assert format_message(error) == "error from the server: gap"
