"""What nodes and inference workers send each other (:mod:`stream_server.cluster.protocol`):
windows exact through int16, scores through float32, bad messages refused with the reason, and
a stream's worker picked alike everywhere, moved only when its own worker goes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ring_buffer.buffer import PCM16_SCALE
from stream_server.cluster.protocol import (
    direct_subject,
    job_from_message,
    job_message,
    pick_worker,
)
from stream_server.core.windows import (
    WindowJob,
    WindowResult,
    WindowScores,
    scores_bytes,
    scores_from_bytes,
)


def test_a_window_crosses_exactly_with_its_stream_facts() -> None:
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32768, 16000).astype(np.float32) / np.float32(PCM16_SCALE)
    job = WindowJob("s1", pcm, 96000, time.monotonic(), since=16000, warm=True)
    headers, payload = job_message(job)
    back = job_from_message(headers, payload)
    assert (back.stream_id, back.end_sample, back.since, back.warm) == ("s1", 96000, 16000, True)
    np.testing.assert_array_equal(back.window, pcm)  # as a 16-bit ring buffer holds it
    assert len(payload) == 2 * len(pcm)


@pytest.mark.parametrize(
    ("headers", "payload", "reason"),
    [
        (None, b"", "without headers"),
        ({"stream_id": "s", "since": "0"}, b"", "without the header 'end_sample'"),
        ({"stream_id": "s", "end_sample": "x", "since": "0"}, b"", "invalid literal"),
        ({"stream_id": "s", "end_sample": "1", "since": "0"}, b"abc", "3 bytes"),
    ],
)
def test_a_bad_window_is_refused_with_the_reason(
    headers: dict[str, str] | None, payload: bytes, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        job_from_message(headers, payload)


def test_a_windows_scores_cross_as_float32() -> None:
    probs = np.array([0.1, 0.7, 0.2], dtype=np.float32)
    result = WindowResult(WindowJob("s", probs, 3, 0.0), probs, 1, 0.0, -23.5, 0.25)
    scores = scores_from_bytes(scores_bytes(WindowScores.of_results([result])), 1, 3)
    np.testing.assert_array_equal(scores.probs, probs[None])
    assert (scores.level_dbfs[0], scores.speech[0]) == (-23.5, 0.25)
    with pytest.raises(ValueError, match="5 scores for 1 windows of 4 labels"):
        scores_from_bytes(scores_bytes(WindowScores.of_results([result])), 1, 4)


def test_a_stream_keeps_its_worker_unless_that_one_goes() -> None:
    streams = [f"stream-{i}" for i in range(2000)]
    three = ["a1", "b2", "c3"]
    before = {s: pick_worker(s, three) for s in streams}
    assert before == {s: pick_worker(s, list(reversed(three))) for s in streams}  # any order
    counts = {w: sum(1 for v in before.values() if v == w) for w in three}
    assert all(550 <= n <= 780 for n in counts.values()), counts  # about a third each
    after = {s: pick_worker(s, ["a1", "c3"]) for s in streams}  # b2 goes
    assert all(after[s] == before[s] for s in streams if before[s] != "b2")
    grown = {s: pick_worker(s, [*three, "d4"]) for s in streams}  # d4 comes
    moved = [s for s in streams if grown[s] != before[s]]
    assert all(grown[s] == "d4" for s in moved) and 350 <= len(moved) <= 650
    assert pick_worker("s", []) is None
    assert direct_subject("a1") == "genrecast.windows.a1"
