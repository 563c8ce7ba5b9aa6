"""Tests for stream_server.messages: client message parsing, server type check, serialisation."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from stream_server.errors import AudioFormatError, ProtocolError
from stream_server.messages import (
    SAMPLE_FORMATS,
    SERVER_TYPES,
    GenreUpdate,
    LabelProb,
    StreamEnded,
    StreamStarted,
    dumps,
    error,
    parse_client_message,
    parse_server_message,
    stamp_seq,
)


def start(**fields: Any) -> str:
    return json.dumps({"type": "start", "sample_rate": 44100, "channels": 2, **fields})


def protocol_error(text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    return info.value


# --------------------------------------------------------------------------- start / stop


def test_start_with_name_and_format() -> None:
    msg = parse_client_message(start(name="radio one", format="f32le"))
    assert msg == {
        "type": "start",
        "sample_rate": 44100,
        "channels": 2,
        "format": "f32le",
        "name": "radio one",
    }


def test_start_without_name_defaults_to_s16le() -> None:
    msg = parse_client_message(start())
    assert msg == {"type": "start", "sample_rate": 44100, "channels": 2, "format": "s16le"}
    assert "name" not in msg


def test_start_with_null_name_has_no_name() -> None:
    msg = parse_client_message(start(name=None))
    assert "name" not in msg


def test_start_drops_unknown_fields() -> None:
    msg = parse_client_message(start(extra=[1, 2], format="s16le"))
    assert set(msg) == {"type", "sample_rate", "channels", "format"}


def test_start_from_bytes() -> None:
    msg = parse_client_message(start(name="é").encode("utf-8"))
    assert msg["type"] == "start"
    assert msg.get("name") == "é"


def test_name_of_200_characters_is_accepted() -> None:
    msg = parse_client_message(start(name="n" * 200))
    assert msg.get("name") == "n" * 200


def test_empty_name_is_kept() -> None:
    assert parse_client_message(start(name="")).get("name") == ""


@pytest.mark.parametrize("name", ["n" * 201, 5, ["a"], {"a": 1}, True])
def test_bad_name(name: Any) -> None:
    err = protocol_error(start(name=name))
    assert "'name'" in str(err)
    assert (err.code, err.close_code) == ("invalid_text", 1007)


def test_stop() -> None:
    assert parse_client_message('{"type": "stop"}') == {"type": "stop"}


def test_stop_ignores_other_fields() -> None:
    assert parse_client_message('{"type": "stop", "reason": "done"}') == {"type": "stop"}


def test_sample_formats() -> None:
    assert SAMPLE_FORMATS == ("s16le", "f32le")


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text", ["", "{", "not json", "{'type': 'stop'}", b"\xff\xfe\x00"])
def test_invalid_json(text: str | bytes) -> None:
    err = protocol_error(text)
    assert type(err) is ProtocolError
    assert (err.code, err.close_code) == ("invalid_json", 1007)
    assert "invalid JSON" in str(err)


@pytest.mark.parametrize("text", ["[]", '["start"]', "1", '"start"', "null", "true"])
def test_non_object_json(text: str) -> None:
    err = protocol_error(text)
    assert (err.code, err.close_code) == ("invalid_json", 1007)
    assert "JSON object" in str(err)


def test_deeply_nested_json_is_a_protocol_error() -> None:
    err = protocol_error("[" * 100_000)
    assert err.code == "invalid_json"


@pytest.mark.parametrize("kind", ["begin", "START", None, 1, ["start"]])
def test_unknown_type(kind: Any) -> None:
    err = protocol_error(json.dumps({"type": kind, "sample_rate": 44100, "channels": 1}))
    assert type(err) is ProtocolError
    assert (err.code, err.close_code) == ("protocol", 1008)
    assert "unknown message type" in str(err)
    assert repr(kind) in str(err)


def test_missing_type() -> None:
    err = protocol_error('{"sample_rate": 44100}')
    assert "unknown message type None" in str(err)


@pytest.mark.parametrize("fmt", ["s24le", "S16LE", "f64le", 16, None])
def test_unknown_format(fmt: Any) -> None:
    with pytest.raises(AudioFormatError) as info:
        parse_client_message(start(format=fmt))
    err = info.value
    assert isinstance(err, ProtocolError)
    assert (err.code, err.close_code) == ("unsupported_format", 1003)
    assert repr(fmt) in str(err)


def test_format_is_checked_before_the_rate() -> None:
    text = json.dumps({"type": "start", "format": "u8", "sample_rate": "x"})
    with pytest.raises(AudioFormatError):
        parse_client_message(text)


@pytest.mark.parametrize("field", ["sample_rate", "channels"])
@pytest.mark.parametrize("value", ["44100", 44100.0, 44100.5, True, False, None, [44100]])
def test_non_integer_fields(field: str, value: Any) -> None:
    err = protocol_error(start(**{field: value}))
    assert type(err) is ProtocolError
    assert (err.code, err.close_code) == ("protocol", 1008)
    assert f"integer {field!r}" in str(err)
    assert repr(value) in str(err)


@pytest.mark.parametrize("field", ["sample_rate", "channels"])
def test_missing_integer_field(field: str) -> None:
    obj = {"type": "start", "sample_rate": 44100, "channels": 2}
    del obj[field]
    err = protocol_error(json.dumps(obj))
    assert f"integer {field!r}" in str(err)
    assert "None" in str(err)


def test_nan_sample_rate_is_rejected() -> None:
    err = protocol_error('{"type": "start", "sample_rate": NaN, "channels": 1}')
    assert "sample_rate" in str(err)


def test_range_of_integers_is_not_checked_here() -> None:
    # Ranges are the server's business (validate_format); the parser only checks types.
    msg = parse_client_message(start(sample_rate=-5, channels=0))
    assert msg["type"] == "start"
    assert (msg["sample_rate"], msg["channels"]) == (-5, 0)


# --------------------------------------------------------------------------- server messages


@pytest.mark.parametrize("kind", sorted(SERVER_TYPES))
def test_parse_server_message_accepts_known_types(kind: str) -> None:
    text = json.dumps({"type": kind, "seq": 3, "stream_id": "s"})
    assert parse_server_message(text) == {"type": kind, "seq": 3, "stream_id": "s"}


def test_server_types() -> None:
    assert sorted(SERVER_TYPES) == [
        "error",
        "genre.change",
        "genre.update",
        "stream.ended",
        "stream.started",
        "track.change",
    ]


@pytest.mark.parametrize("text", ['{"type": "start"}', '{"type": "stop"}', "{}", '{"type": 1}'])
def test_parse_server_message_rejects_other_types(text: str) -> None:
    with pytest.raises(ProtocolError, match="unknown server message type"):
        parse_server_message(text)


def test_parse_server_message_rejects_non_objects() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_server_message("[1]")
    assert info.value.code == "invalid_json"
    with pytest.raises(ProtocolError) as info:
        parse_server_message(b"{")
    assert info.value.close_code == 1007


# --------------------------------------------------------------------------- dumps / error


def update(confidence: float = 0.75) -> GenreUpdate:
    return GenreUpdate(
        type="genre.update",
        seq=7,
        stream_id="abc",
        stream_time_s=12.5,
        window_start_s=2.5,
        wall_time=1700000000.25,
        top=[LabelProb(label="jazz", prob=0.75), LabelProb(label="rock", prob=0.125)],
        smoothed=[LabelProb(label="jazz", prob=0.625), LabelProb(label="rock", prob=0.375)],
        genre="jazz",
        confidence=confidence,
        latency_ms=31.5,
    )


def test_dumps_is_compact_and_round_trips() -> None:
    msg = update()
    text = dumps(msg)
    assert " " not in text
    assert "\n" not in text
    assert text.startswith('{"type":"genre.update","seq":7,')
    assert '"top":[{"label":"jazz","prob":0.75},{"label":"rock","prob":0.125}]' in text
    assert json.loads(text) == msg
    assert parse_server_message(text) == msg


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_dumps_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        dumps(update(confidence=value))


def test_dumps_keeps_non_ascii_escaped() -> None:
    msg = StreamEnded(
        type="stream.ended",
        seq=1,
        stream_id="s",
        reason="arrêt",
        stream_time_s=0.0,
        wall_time=0.0,
        windows_computed=0,
        windows_skipped=0,
    )
    text = dumps(msg)
    assert text.isascii()
    assert json.loads(text)["reason"] == "arrêt"


def test_dumps_client_message() -> None:
    assert dumps({"type": "stop"}) == '{"type":"stop"}'


def test_error_builder_without_stream() -> None:
    msg = error("resume_gap", "gone")
    assert msg == {"type": "error", "code": "resume_gap", "message": "gone"}
    assert "stream_id" not in msg
    assert dumps(msg) == '{"type":"error","code":"resume_gap","message":"gone"}'


def test_error_builder_with_stream() -> None:
    msg = error("inference", "boom", "s1")
    assert msg == {"type": "error", "code": "inference", "message": "boom", "stream_id": "s1"}
    assert parse_server_message(dumps(msg)) == msg


def test_error_builder_with_empty_stream_id_keeps_it() -> None:
    assert error("x", "y", "") == {"type": "error", "code": "x", "message": "y", "stream_id": ""}


def test_protocol_error_defaults() -> None:
    err = ProtocolError("bad")
    assert (err.code, err.close_code, str(err)) == ("protocol", 1008, "bad")
    fmt = AudioFormatError("nope")
    assert (fmt.code, fmt.close_code, str(fmt)) == ("unsupported_format", 1003, "nope")


def test_a_published_message_is_stamped_without_parsing_it_again() -> None:
    started = StreamStarted(
        type="stream.started",
        seq=0,
        stream_id="ab12",
        name='tricky ,"seq":0, name',  # the same bytes later in the text stay as they are
        kind="ws",
        wall_time=1.5,
    )
    ended = StreamEnded(
        type="stream.ended",
        seq=0,
        stream_id="ab12",
        reason="stopped",
        stream_time_s=3.0,
        wall_time=2.0,
        windows_computed=2,
        windows_skipped=0,
    )
    for message in (started, ended):
        stamped = stamp_seq(dumps(message), 4711)
        assert json.loads(stamped) == {**message, "seq": 4711}
    for text in ('{"seq":0,"type":"stream.ended"}', '{"type":"x","seq":1,"a":2}', "{}"):
        with pytest.raises(ValueError, match="seq 0"):
            stamp_seq(text, 1)
