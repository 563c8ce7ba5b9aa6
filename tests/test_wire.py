"""The frames between the engine process and its workers, the payloads they carry, and the
metrics of several processes summed into one page."""

from __future__ import annotations

import asyncio
import socket
import struct

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_server.core.windows import WindowScores, pcm16_bytes, scores_bytes, scores_from_bytes
from stream_server.serve.metrics import Metrics, merge_metrics
from stream_server.serve.wire import MAX_HEADER_BYTES, read_frame, write_frame


async def _pair() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter]:
    ours, theirs = socket.socketpair()
    reader, reader_side = await asyncio.open_unix_connection(sock=ours)
    _, writer = await asyncio.open_unix_connection(sock=theirs)
    return reader, writer, reader_side


def test_frames_arrive_whole_and_in_order_and_a_close_between_frames_ends_them() -> None:
    async def scenario() -> list[object]:
        reader, writer, other = await _pair()
        payload = bytes(range(256)) * 1000
        write_frame(writer, {"op": "a", "n": 1})
        write_frame(writer, {"op": "b", "text": "é"}, payload)
        writer.close()
        got: list[object] = []
        while (frame := await read_frame(reader)) is not None:
            got.append(frame)
        other.close()
        assert got[1] == ({"op": "b", "text": "é"}, payload)
        return got

    got = asyncio.run(scenario())
    assert got[0] == ({"op": "a", "n": 1}, b"")
    assert len(got) == 2


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (struct.pack(">II", MAX_HEADER_BYTES + 1, 0), ValueError),  # a length over the limit
        (struct.pack(">II", 2, 0) + b"[]", ValueError),  # not an object
        (struct.pack(">II", 2, 0) + b"{}", ValueError),  # no "op"
        (struct.pack(">II", 20, 0) + b'{"op"', asyncio.IncompleteReadError),  # cut short
        (b"\x00\x00", asyncio.IncompleteReadError),  # cut inside the prefix
    ],
)
def test_a_bad_frame_is_refused(raw: bytes, error: type[Exception]) -> None:
    async def scenario() -> None:
        reader, writer, other = await _pair()
        writer.write(raw)
        writer.close()
        with pytest.raises(error):
            await read_frame(reader)
        other.close()

    asyncio.run(scenario())


def test_windows_travel_as_exact_16_bit_pcm_and_scores_as_float32() -> None:
    rng = np.random.default_rng(0)
    steps = rng.integers(-32768, 32768, size=8000)
    window = (steps / 32768).astype(np.float32)  # what a 16-bit ring buffer gives back
    sent = np.frombuffer(pcm16_bytes(window), dtype="<i2")
    np.testing.assert_array_equal(sent, steps)
    assert pcm16_bytes(np.array([1.5, -2.0], np.float32)) == struct.pack("<hh", 32767, -32768)

    scores = WindowScores(
        rng.random((3, 10), dtype=np.float32),
        rng.random(3, dtype=np.float32),
        rng.random(3, dtype=np.float32),
    )
    back = scores_from_bytes(scores_bytes(scores), 3, 10)
    for a, b in zip(
        (scores.probs, scores.level_dbfs, scores.speech),
        (back.probs, back.level_dbfs, back.speech),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="scores for"):
        scores_from_bytes(scores_bytes(scores), 2, 10)


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_the_metrics_of_several_processes_are_summed() -> None:
    first, second = Metrics(), Metrics()
    first.windows_computed.inc(3)
    second.windows_computed.inc(4)
    first.errors.labels(kind="idle").inc()
    second.errors.labels(kind="idle").inc(2)
    second.errors.labels(kind="busy").inc()
    first.batch_size.observe(3)
    second.batch_size.observe(100)
    first.active_streams.set(2)
    second.active_streams.set(5)
    merged = _samples(merge_metrics([first.render().decode(), second.render().decode()]))
    assert merged[("genrecast_windows_computed_total", ())] == 7
    assert merged[("genrecast_errors_total", (("kind", "idle"),))] == 3
    assert merged[("genrecast_errors_total", (("kind", "busy"),))] == 1
    assert merged[("genrecast_active_streams", ())] == 7
    assert merged[("genrecast_batch_size_count", ())] == 2
    assert merged[("genrecast_batch_size_sum", ())] == 103
    assert merged[("genrecast_batch_size_bucket", (("le", "4.0"),))] == 1
    assert merged[("genrecast_batch_size_bucket", (("le", "+Inf"),))] == 2
    created = [key for key in merged if key[0] == "genrecast_windows_computed_created"]
    one = _samples(first.render())
    assert merged[created[0]] == min(one[created[0]], _samples(second.render())[created[0]])
    # one process alone comes out as it went in
    assert _samples(merge_metrics([first.render().decode()])) == one


def test_a_writer_gives_up_on_a_reader_that_stops_reading() -> None:
    async def scenario() -> int:
        _, writer, other = await _pair()  # nobody reads the other end
        payload = bytes(64 * 1024)
        sent = 0
        refusal = None
        while refusal is None and sent < 10_000:
            try:
                write_frame(writer, {"op": "x"}, payload, max_pending=1024 * 1024)
            except ConnectionError as exc:
                refusal = str(exc)
            else:
                sent += 1
                await asyncio.sleep(0)  # the socket takes what its buffers hold
        assert refusal is not None and "queued for a reader that does not read" in refusal
        queued = writer.transport.get_write_buffer_size()
        writer.transport.abort()
        other.close()
        assert 1024 * 1024 < queued <= 1024 * 1024 + 2 * len(payload)
        return sent

    sent = asyncio.run(scenario())
    assert 16 < sent < 10_000  # the kernel's buffers first, then a MiB of our own
