"""Tests for stream_server.core.session: PCM in, due windows out, scores in, messages out."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from stream_server.config import Config
from stream_server.core.audio import SampleFormat, downmix, pcm_to_float, resample_once
from stream_server.core.decoding import OfflineParams
from stream_server.core.gate import MUSIC, SILENCE, SPEECH, GateParams
from stream_server.core.session import SessionParams, StreamSession
from stream_server.core.smoothing import SmoothingParams
from stream_server.core.timeline import Segment
from stream_server.core.windows import WindowJob
from stream_server.inference.facts import session_params, window_seconds
from stream_server.inference.model import LoadedModel
from tests.helpers.audio import music, stored, to_s16le
from tests.helpers.constants import LABELS

RATE = 22050
WINDOW = 2 * RATE  # 2 s
HOP = RATE // 2  # 0.5 s


def make_params(**changes: object) -> SessionParams:
    fields: dict[str, object] = {
        "model_rate": RATE,
        "window_samples": WINDOW,
        "hop_samples": HOP,
        "buffer_samples": 4 * RATE,
        "labels": LABELS,
        "top_k": 3,
        # the classic hysteresis, changes stored where they were confirmed
        "smoothing": SmoothingParams(
            time_constant_s=0.0, switch_margin=0.1, min_dwell_s=1.0, stale_margin=1.0
        ),
        "backdate_max_s": 0.0,
    }
    fields.update(changes)
    return SessionParams(**fields)  # type: ignore[arg-type]


def make_session(
    params: SessionParams | None = None,
    *,
    rate: int = RATE,
    channels: int = 1,
    fmt: SampleFormat = "f32le",
) -> StreamSession:
    return StreamSession(
        "s1", params or make_params(), sample_rate=rate, channels=channels, fmt=fmt
    )


def encode(frames: np.ndarray, fmt: SampleFormat) -> bytes:
    if fmt == "s16le":
        return to_s16le(frames)
    return frames.astype("<f4").tobytes()


def expected_signal(data: bytes, fmt: SampleFormat, channels: int, rate: int) -> np.ndarray:
    """What the session should hold: the decoded, downmixed signal resampled in one go."""
    return resample_once(downmix(pcm_to_float(data, fmt, channels)), rate, RATE)


def random_chunks(data: bytes, rng: np.random.Generator, most: int) -> list[bytes]:
    chunks = []
    i = 0
    while i < len(data):
        n = int(rng.integers(1, most + 1))
        chunks.append(data[i : i + n])
        i += n
    return chunks


def job_at(end_sample: int, arrival: float = 100.0) -> WindowJob:
    return WindowJob("s1", np.zeros(WINDOW, np.float32), end_sample, arrival)


def fields(segment: Segment) -> tuple[float, float, str, float, int]:
    """A segment as a tuple, its mean confidence (float32-derived) rounded to 6 decimals."""
    confidence = round(segment.confidence, 6)
    return (segment.start_s, segment.end_s, segment.genre, confidence, segment.updates)


def indexed(
    segments: list[tuple[int, Segment]],
) -> list[tuple[int, tuple[float, float, str, float, int]]]:
    return [(index, fields(segment)) for index, segment in segments]


def probs(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# --------------------------------------------------------------------------- audio in


@pytest.mark.parametrize(
    ("rate", "channels", "fmt"),
    [
        (44100, 2, "s16le"),
        (44100, 2, "f32le"),
        (22050, 1, "s16le"),
        (22050, 1, "f32le"),
    ],
)
def test_windows_are_due_every_hop_with_the_resampled_audio(
    rate: int, channels: int, fmt: SampleFormat
) -> None:
    seconds = 3.2
    data = encode(music(seconds, rate=rate, channels=channels, seed=4), fmt)
    expected = expected_signal(data, fmt, channels, rate)
    assert expected.size == round(seconds * RATE)

    session = make_session(rate=rate, channels=channels, fmt=fmt)
    rng = np.random.default_rng(rate + channels)
    # chunks well under one hop of audio, so no window is ever skipped
    chunks = random_chunks(data, rng, most=4000)
    jobs: list[tuple[float, WindowJob]] = []
    for i, chunk in enumerate(chunks):
        job = session.feed(chunk, arrival=float(i))
        if job is not None:
            jobs.append((float(i), job))
    tail = session.finish(arrival=-1.0)
    if tail is not None:
        jobs.append((-1.0, tail))

    ends = [WINDOW + k * HOP for k in range(3)]  # 2.0, 2.5, 3.0 s
    assert [job.end_sample for _, job in jobs] == ends
    assert session.windows_due == 3
    assert session.windows_skipped == 0
    assert session.bytes_in == len(data)
    assert session.buffer.written == expected.size
    assert session.stream_time_s == expected.size / RATE
    for arrival, job in jobs:
        assert job.stream_id == "s1"
        assert job.arrival == arrival
        assert job.window.shape == (WINDOW,)
        assert job.window.dtype == np.float32
        want = expected[job.end_sample - WINDOW : job.end_sample]
        if rate == RATE and fmt == "f32le":
            np.testing.assert_array_equal(job.window, want)
        else:
            np.testing.assert_allclose(job.window, want, atol=1e-4)


def test_one_large_feed_returns_only_the_newest_window() -> None:
    data = encode(music(3.25, rate=RATE, channels=1, seed=1), "f32le")
    session = make_session()
    job = session.feed(data, arrival=5.0)
    assert job is not None
    assert job.end_sample == WINDOW + 2 * HOP
    assert job.arrival == 5.0
    assert session.windows_due == 3
    assert session.windows_skipped == 2
    expected = expected_signal(data, "f32le", 1, RATE)
    np.testing.assert_array_equal(job.window, expected[HOP * 2 : HOP * 2 + WINDOW])
    # the next window is due one hop after the returned one
    assert session.feed(encode(np.zeros((HOP // 2, 1), np.float32), "f32le")) is None
    nxt = session.feed(encode(np.zeros((HOP, 1), np.float32), "f32le"))
    assert nxt is not None and nxt.end_sample == WINDOW + 3 * HOP
    assert session.windows_skipped == 2


def test_large_feed_longer_than_the_buffer() -> None:
    params = make_params(buffer_samples=WINDOW + HOP)
    session = make_session(params)
    data = encode(music(6.0, rate=RATE, channels=1, seed=2), "f32le")
    job = session.feed(data)
    assert job is not None
    assert job.end_sample == 6 * RATE  # 2.0 s + 8 hops
    assert session.windows_due == 9
    assert session.windows_skipped == 8
    expected = expected_signal(data, "f32le", 1, RATE)
    np.testing.assert_array_equal(job.window, expected[-WINDOW:])


def test_resampled_feed_skips_and_finish_completes_the_last_window() -> None:
    rate = 44100
    data = encode(music(3.0, rate=rate, channels=2, seed=3), "s16le")
    session = make_session(rate=rate, channels=2, fmt="s16le")
    job = session.feed(data, arrival=1.0)
    # the resampler holds back a few samples, so the window ending at 3.0 s is not due yet
    assert session.buffer.written < 3 * RATE
    assert job is not None and job.end_sample == WINDOW + HOP
    assert session.windows_skipped == 1
    tail = session.finish(arrival=2.0)
    assert tail is not None
    assert tail.end_sample == 3 * RATE
    assert tail.arrival == 2.0
    assert session.buffer.written == 3 * RATE
    expected = expected_signal(data, "s16le", 2, rate)
    np.testing.assert_allclose(tail.window, expected[-WINDOW:], atol=1e-4)
    assert session.windows_due == 3
    assert session.finish() is None  # nothing more to flush


def test_finish_without_a_new_window() -> None:
    session = make_session()
    assert session.feed(encode(np.zeros((RATE, 1), np.float32), "f32le")) is None
    assert session.finish() is None
    assert session.windows_due == 0
    assert session.stream_time_s == pytest.approx(1.0)


@pytest.mark.parametrize(("channels", "fmt"), [(2, "s16le"), (3, "f32le"), (1, "s16le")])
def test_partial_frames_across_feeds(channels: int, fmt: SampleFormat) -> None:
    frames = music(0.2, rate=RATE, channels=channels, seed=5)
    data = encode(frames, fmt)
    whole = make_session(channels=channels, fmt=fmt)
    whole.feed(data)
    split = make_session(channels=channels, fmt=fmt)
    frame_bytes = (2 if fmt == "s16le" else 4) * channels
    # odd chunk sizes: nearly every feed ends inside a frame
    step = frame_bytes * 7 + 3
    for i in range(0, len(data), step):
        split.feed(data[i : i + step])
    n = len(frames)
    assert whole.buffer.written == split.buffer.written == n
    np.testing.assert_array_equal(split.buffer.read(0, n), whole.buffer.read(0, n))
    np.testing.assert_array_equal(
        split.buffer.read(0, n), downmix(pcm_to_float(data, fmt, channels))
    )
    assert split.bytes_in == len(data)


def test_a_feed_shorter_than_a_frame_adds_nothing() -> None:
    session = make_session(channels=2, fmt="s16le")
    assert session.feed(b"\x01\x02\x03") is None
    assert session.buffer.written == 0
    assert session.bytes_in == 3
    session.feed(b"\x04")
    assert session.buffer.written == 1


def test_buffer_is_consumed_up_to_the_next_window_start() -> None:
    session = make_session()
    session.feed(encode(np.zeros((WINDOW, 1), np.float32), "f32le"))
    assert session.buffer.consumed == HOP  # the next window, ending at WINDOW + HOP, starts here
    assert session.buffer.capacity == 4 * RATE


def test_skipped_counts_engine_drops() -> None:
    session = make_session()
    session.skipped()
    session.skipped(3)
    assert session.windows_skipped == 4


def test_session_identity_fields() -> None:
    before = time.time()
    session = StreamSession(
        "id7", make_params(), sample_rate=48000, channels=2, fmt="s16le", name="", kind="url"
    )
    assert session.name == "id7"  # defaults to the stream id
    assert (session.kind, session.sample_rate, session.channels, session.fmt) == (
        "url",
        48000,
        2,
        "s16le",
    )
    assert before <= session.started_wall <= time.time()
    named = StreamSession("id8", make_params(), sample_rate=RATE, channels=1, fmt="f32le", name="x")
    assert named.name == "x"
    assert named.kind == "ws"
    assert named.last_update is None


# --------------------------------------------------------------------------- scores in


def test_first_update_fields_and_change() -> None:
    session = make_session()
    before = time.time()
    scored = session.on_scores(job_at(WINDOW, arrival=100.0), probs(0.1, 0.2, 0.6, 0.1), 100.25)
    update = scored.update
    assert update["type"] == "genre.update"
    assert update["seq"] == 0
    assert update["stream_id"] == "s1"
    assert update["stream_time_s"] == 2.0
    assert update["window_start_s"] == 0.0
    assert before <= update["wall_time"] <= time.time()
    assert update["top"] == [
        {"label": "jazz", "prob": 0.6},
        {"label": "classical", "prob": 0.2},
        {"label": "blues", "prob": 0.1},  # ties keep label order
    ]
    assert update["genre"] == "jazz"
    assert update["confidence"] == 0.6
    # every label's smoothed probability, best first (the first update is its own smoothing)
    assert [p["label"] for p in update["smoothed"]] == ["jazz", "classical", "blues", "rock"]
    assert [p["prob"] for p in update["smoothed"]] == [0.6, 0.2, 0.1, 0.1]
    assert update["latency_ms"] == 250.0
    assert session.last_update is update
    assert session.windows_computed == 1

    change = scored.change
    assert change is not None
    assert change["type"] == "genre.change"
    assert change["stream_id"] == "s1"
    assert change["previous"] is None
    assert change["genre"] == "jazz"
    assert change["confidence"] == 0.6
    assert change["stream_time_s"] == 2.0
    assert change["wall_time"] == update["wall_time"]

    assert indexed(scored.segments) == [(0, (0.0, 2.0, "jazz", 0.6, 1))]


def test_update_times_follow_the_window_end() -> None:
    session = make_session()
    end = WINDOW + 3 * HOP + 7  # 3.5 s and 7 samples
    update = session.on_scores(job_at(end), probs(0.25, 0.25, 0.25, 0.25), 100.0).update
    assert update["stream_time_s"] == round(end / RATE, 3)
    assert update["window_start_s"] == round((end - WINDOW) / RATE, 3)
    assert update["genre"] == "blues"  # all tied: the first label
    assert [p["label"] for p in update["top"]] == ["blues", "classical", "jazz"]


def test_latency_is_never_negative_and_defaults_to_now() -> None:
    session = make_session()
    late = session.on_scores(job_at(WINDOW, arrival=50.0), probs(1, 0, 0, 0), now=49.0)
    assert late.update["latency_ms"] == 0.0
    arrival = time.monotonic()
    scored = session.on_scores(job_at(WINDOW + HOP, arrival=arrival), probs(1, 0, 0, 0))
    assert 0.0 <= scored.update["latency_ms"] <= (time.monotonic() - arrival) * 1000 + 0.01


@pytest.mark.parametrize(("top_k", "expected"), [(1, 1), (2, 2), (4, 4), (10, 4)])
def test_top_k_length(top_k: int, expected: int) -> None:
    session = make_session(make_params(top_k=top_k))
    update = session.on_scores(job_at(WINDOW), probs(0.4, 0.1, 0.2, 0.3), 100.0).update
    labels = [p["label"] for p in update["top"]]
    assert labels == ["blues", "rock", "jazz", "classical"][:expected]
    values = [p["prob"] for p in update["top"]]
    assert values == sorted(values, reverse=True)


def test_probabilities_are_rounded_to_four_decimals() -> None:
    session = make_session()
    update = session.on_scores(
        job_at(WINDOW), probs(0.123456, 0.654321, 0.111111, 0.111112), 100.0
    ).update
    assert update["top"][0] == {"label": "classical", "prob": 0.6543}
    assert update["confidence"] == 0.6543


def test_genre_and_confidence_come_from_the_smoothed_tracker() -> None:
    params = make_params(smoothing=SmoothingParams(1.0, 0.1, 1.0, 1.0))
    session = make_session(params)
    p1, p2 = probs(0.1, 0.2, 0.6, 0.1), probs(0.1, 0.1, 0.1, 0.7)
    session.on_scores(job_at(WINDOW), p1, 100.0)
    update = session.on_scores(job_at(WINDOW + HOP), p2, 100.0).update
    a = 1.0 - np.exp(-0.5)
    smoothed = (1 - a) * p1.astype(np.float64) + a * p2.astype(np.float64)
    smoothed /= smoothed.sum()
    # the raw top-k is led by rock, the smoothed genre is still jazz
    assert update["top"][0] == {"label": "rock", "prob": 0.7}
    assert update["genre"] == "jazz"
    assert update["confidence"] == pytest.approx(smoothed[2], abs=1e-4)


def test_change_only_after_hysteresis_with_indexed_contiguous_segments() -> None:
    session = make_session()  # no smoothing, margin 0.1, dwell 1.0 s
    jazz, rock = probs(0.1, 0.2, 0.6, 0.1), probs(0.1, 0.1, 0.2, 0.6)
    first = session.on_scores(job_at(WINDOW), jazz, 100.0)  # t = 2.0
    assert first.change is not None and first.change["previous"] is None

    steps = []
    for k in range(1, 4):  # t = 2.5, 3.0, 3.5: rock ahead from 2.5
        steps.append(session.on_scores(job_at(WINDOW + k * HOP), rock, 100.0))
    t25, t30, t35 = steps
    assert t25.change is None and t25.update["genre"] == "jazz"
    assert t25.update["confidence"] == 0.2
    assert t30.change is None and t30.update["genre"] == "jazz"
    assert indexed(t25.segments) == [(0, (0.0, 2.5, "jazz", 0.4, 2))]

    change = t35.change
    assert change is not None
    assert (change["previous"], change["genre"]) == ("jazz", "rock")
    assert change["stream_time_s"] == 3.5
    assert change["confidence"] == 0.6
    assert t35.update["genre"] == "rock"
    # the tail that changed: the new segment (the closed one was stored as it is)
    assert indexed(t35.segments) == [(1, (3.0, 3.5, "rock", 0.6, 1))]
    assert [fields(s) for s in session.segments()] == [
        (0.0, 3.0, "jazz", round((0.6 + 0.2 + 0.2) / 3, 6), 3),
        (3.0, 3.5, "rock", 0.6, 1),
    ]

    later = session.on_scores(job_at(WINDOW + 4 * HOP), rock, 100.0)
    assert later.change is None
    assert indexed(later.segments) == [(1, (3.0, 4.0, "rock", 0.6, 2))]

    segments = session.segments()
    assert [(s.start_s, s.end_s, s.genre, s.updates) for s in segments] == [
        (0.0, 3.0, "jazz", 3),
        (3.0, 4.0, "rock", 2),
    ]
    assert segments[0].end_s == segments[1].start_s
    assert session.windows_computed == 5


def test_challenger_dropping_back_resets_the_dwell() -> None:
    session = make_session()
    jazz, rock = probs(0.1, 0.2, 0.6, 0.1), probs(0.1, 0.1, 0.2, 0.6)
    sequence = [jazz, rock, rock, jazz, rock, rock]  # t = 2.0 .. 4.5
    changes = [
        session.on_scores(job_at(WINDOW + k * HOP), p, 100.0).change for k, p in enumerate(sequence)
    ]
    assert changes[0] is not None
    assert changes[1:] == [None] * 5
    assert [s.genre for s in session.segments()] == ["jazz"]


def test_a_confirmed_change_is_stored_from_where_the_new_genre_took_the_lead() -> None:
    session = make_session(make_params(backdate_max_s=30.0))
    jazz, rock = probs(0.1, 0.2, 0.6, 0.1), probs(0.1, 0.1, 0.2, 0.6)
    session.on_scores(job_at(WINDOW), jazz, 100.0)  # t = 2.0, window centred at 1.0
    steps = [session.on_scores(job_at(WINDOW + k * HOP), rock, 100.0) for k in (1, 2, 3)]
    change = steps[-1].change
    assert change is not None
    # the live change comes when it is confirmed...
    assert (change["previous"], change["genre"], change["stream_time_s"]) == ("jazz", "rock", 3.5)
    # ...the stored timeline has rock from midway between the centres of the last jazz window
    # (1.0 s) and the first rock window (1.5 s), and rewrites the tail from the jazz segment
    assert indexed(steps[-1].segments) == [
        (0, (0.0, 1.25, "jazz", 0.6, 1)),
        (1, (1.25, 3.5, "rock", 0.6, 3)),
    ]
    assert [(s.start_s, s.end_s, s.genre) for s in session.segments()] == [
        (0.0, 1.25, "jazz"),
        (1.25, 3.5, "rock"),
    ]


def test_gate_inputs_give_silence_and_speech_updates() -> None:
    session = make_session(make_params(gate=GateParams(min_run_s=0.0)))
    jazz = probs(0.1, 0.2, 0.6, 0.1)
    first = session.on_scores(job_at(WINDOW), jazz, 100.0, level_dbfs=-20.0)
    assert first.update["genre"] == "jazz"
    assert first.kind == MUSIC
    quiet = session.on_scores(job_at(WINDOW + HOP), jazz, 100.0, level_dbfs=-90.0)
    assert quiet.kind == SILENCE
    assert (quiet.update["genre"], quiet.update["confidence"]) == ("silence", 1.0)
    assert quiet.change is not None
    assert (quiet.change["previous"], quiet.change["genre"]) == ("jazz", "silence")
    talk = session.on_scores(job_at(WINDOW + 2 * HOP), jazz, 100.0, speech_prob=0.8)
    assert talk.kind == SPEECH
    assert (talk.update["genre"], talk.update["confidence"]) == ("speech", 0.8)
    assert talk.update["top"][0]["label"] == "jazz"  # the genre model's own view stays
    assert [s.genre for s in session.segments()] == ["jazz", "silence", "speech"]


def test_segments_are_copies() -> None:
    session = make_session()
    session.on_scores(job_at(WINDOW), probs(1, 0, 0, 0), 100.0)
    session.segments()[0].genre = "changed"
    assert session.segments()[0].genre == "blues"
    assert make_session().segments() == []


# --------------------------------------------------------------------------- params


def test_session_params_from_config_and_model(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    config = make_config(engine={"window_s": 0.0, "hop_s": 0.5, "buffer_s": 10.0, "top_k": 2})
    assert window_seconds(config, tiny_model) == 2.0
    params = session_params(config, tiny_model)
    assert params == SessionParams(
        model_rate=22050,
        window_samples=44100,
        hop_samples=11025,
        buffer_samples=220500,
        labels=LABELS,
        top_k=2,
        smoothing=SmoothingParams(1.0, 0.2, 1.0, 0.5),
    )
    tuned = make_config(
        smoothing={"stale_margin": 0.4, "backdate_max_s": 12.0},
        gate={"enabled": False, "silence_dbfs": -50.0, "speech_threshold": 0.7, "min_run_s": 2.0},
        offline={"decoding": "live", "switch_cost": 3.0},
    )
    params = session_params(tuned, tiny_model)
    assert params.smoothing.stale_margin == 0.4
    assert params.backdate_max_s == 12.0
    assert params.gate == GateParams(False, -50.0, 0.7, 2.0)
    assert params.offline == OfflineParams("live", 3.0)
    assert params.label_params().hop_s == 0.5


def test_session_params_with_its_own_window(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    config = make_config(engine={"window_s": 1.5, "hop_s": 0.25, "buffer_s": 0.5})
    assert window_seconds(config, tiny_model) == 1.5
    params = session_params(config, tiny_model)
    assert params.window_samples == 33075
    assert params.hop_samples == 5512  # round(0.25 * 22050) = round(5512.5), to even
    # a buffer shorter than one window plus one hop grows to exactly that
    assert params.buffer_samples == 33075 + 5512


def test_session_params_rename_labels(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    config = make_config(model={"labels": {"jazz": "Jazz & Swing", "metal": "unused"}})
    params = session_params(config, tiny_model)
    assert params.labels == ("blues", "classical", "Jazz & Swing", "rock")
    session = StreamSession("s", params, sample_rate=22050, channels=1, fmt="f32le")
    scored = session.on_scores(job_at(WINDOW), probs(0.1, 0.1, 0.7, 0.1), 100.0)
    assert scored.update["genre"] == "Jazz & Swing"
    assert scored.update["top"][0]["label"] == "Jazz & Swing"
    assert scored.change is not None and scored.change["genre"] == "Jazz & Swing"
    assert scored.segments[0][1].genre == "Jazz & Swing"


def test_merged_labels_do_not_produce_a_change_to_the_same_genre(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    config = make_config(
        model={"labels": {"blues": "roots", "jazz": "roots"}},
        smoothing={"time_constant_s": 0.0, "min_dwell_s": 0.0},
    )
    session = StreamSession(
        "s", session_params(config, tiny_model), sample_rate=22050, channels=1, fmt="f32le"
    )
    session.on_scores(job_at(WINDOW), probs(0.7, 0.1, 0.1, 0.1), 100.0)
    scored = session.on_scores(job_at(WINDOW + HOP), probs(0.1, 0.1, 0.7, 0.1), 100.0)
    change = scored.change
    assert change is None or change["previous"] != change["genre"]


def test_session_params_feed_a_session_end_to_end(
    make_config: Callable[..., Config], tiny_model: LoadedModel
) -> None:
    params = session_params(make_config(), tiny_model)
    session = StreamSession("s", params, sample_rate=44100, channels=2, fmt="s16le")
    data = to_s16le(music(2.5, rate=44100, channels=2, seed=9))
    jobs = [session.feed(data[i : i + 8820]) for i in range(0, len(data), 8820)]
    jobs.append(session.finish())
    assert [j.end_sample for j in jobs if j is not None] == [44100, 55125]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"window_samples": 0}, "window and hop must be positive"),
        ({"window_samples": -1}, "window and hop must be positive"),
        ({"hop_samples": 0}, "window and hop must be positive"),
        ({"buffer_samples": WINDOW + HOP - 1}, "at least one window plus one hop"),
    ],
)
def test_session_params_validation(changes: dict[str, int], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        make_params(**changes)


def test_smallest_valid_buffer() -> None:
    params = make_params(buffer_samples=WINDOW + HOP)
    assert params.buffer_samples == WINDOW + HOP
    assert params.top_k == 3
    assert SessionParams(RATE, 10, 5, 15, ("a",)).smoothing == SmoothingParams()


def test_warm_up_jobs_bring_the_audio_before_each_first_window() -> None:
    session = make_session(params=make_params(warm_up=True))
    audio = music(6.0, rate=RATE, channels=1, seed=3)
    signal = expected_signal(encode(audio, "f32le"), "f32le", 1, RATE)
    step = HOP // 2
    jobs = [session.feed(encode(audio[i : i + step], "f32le")) for i in range(0, 3 * HOP, step)]
    warm = [job for job in jobs if job is not None]
    # one warm-up job per hop boundary before the first window, each the audio so far
    assert [job.end_sample for job in warm] == [HOP, 2 * HOP, 3 * HOP]
    for job in warm:
        assert job.warm and job.since == 0
        np.testing.assert_array_equal(job.window, signal[: job.end_sample])
    assert session.windows_due == 0 and session.windows_skipped == 0
    first = session.feed(encode(audio[3 * HOP : WINDOW], "f32le"))
    assert first is not None and not first.warm and first.end_sample == WINDOW
    later = session.feed(encode(audio[WINDOW : WINDOW + HOP], "f32le"))
    assert later is not None and not later.warm  # none after the first window
    # after a gap: warm-up again, from the gap on
    session.mark_gap(1.0)
    gap_at = session.buffer.written
    back = encode(audio[: 2 * HOP + 1], "f32le")
    again = session.feed(back)
    assert again is not None and again.warm
    assert (again.since, again.end_sample) == (gap_at, gap_at + 2 * HOP)
    after = expected_signal(back, "f32le", 1, RATE)
    np.testing.assert_array_equal(again.window, after[: 2 * HOP])


def test_feeds_between_windows_bring_the_audio_since_the_previous_window() -> None:
    """With ``feed_samples`` the audio goes in every feed step, before the first window (all of
    it so far) and between windows (since the previous window's end); windows are unchanged."""
    feed = HOP // 5  # 2205: a window is 20 feed steps, a hop 5
    session = make_session(params=make_params(warm_up=True, feed_samples=feed))
    audio = music(4.0, rate=RATE, channels=1, seed=4)
    signal = expected_signal(encode(audio, "f32le"), "f32le", 1, RATE)
    step = 441
    jobs = [session.feed(encode(audio[i : i + step], "f32le")) for i in range(0, 3 * RATE, step)]
    got = [job for job in jobs if job is not None]
    assert [job.end_sample for job in got if not job.warm] == [WINDOW + k * HOP for k in range(3)]
    warm = [job for job in got if job.warm]
    # every feed boundary brings one job, except where a window is due instead
    want = [b for b in range(feed, 3 * RATE + 1, feed) if b < WINDOW or (b - WINDOW) % HOP]
    assert [job.end_sample for job in warm] == want
    for job in warm:
        last = WINDOW + (job.end_sample - WINDOW) // HOP * HOP  # the previous window's end
        start = 0 if job.end_sample < WINDOW else last
        assert job.since == 0
        np.testing.assert_array_equal(job.window, signal[start : job.end_sample])
    assert session.windows_due == 3 and session.windows_skipped == 0
    # a chunk that crosses several feed boundaries brings one job, up to the latest of them
    session = make_session(params=make_params(warm_up=True, feed_samples=feed))
    session.feed(encode(audio[:WINDOW], "f32le"))
    late = session.feed(encode(audio[WINDOW : WINDOW + 3 * feed + 5], "f32le"))
    assert late is not None and late.warm and late.end_sample == WINDOW + 3 * feed
    assert session.feed(encode(audio[WINDOW + 3 * feed + 5 : WINDOW + 4 * feed], "f32le"))
    assert session.feed(encode(audio[WINDOW + 4 * feed : WINDOW + HOP - 1], "f32le")) is None


def test_no_warm_up_jobs_unless_asked() -> None:
    session = make_session()
    audio = music(1.9, rate=RATE, channels=1, seed=3)
    assert session.feed(encode(audio, "f32le")) is None


def test_a_live_session_keeps_16_bit_audio_in_half_the_memory() -> None:
    """With ``pcm16`` (as the server opens live streams) windows are the audio rounded to
    16-bit steps: exact for 16-bit PCM at the model's rate, within half a step after
    resampling."""
    for rate, fmt in ((RATE, "s16le"), (22050, "f32le")):
        data = encode(music(2.6, rate=rate, channels=1, seed=8), fmt)
        expected = expected_signal(data, fmt, 1, rate)
        params = make_params(pcm16=True)
        session = StreamSession("s", params, sample_rate=rate, channels=1, fmt=fmt)
        plain = StreamSession("s", make_params(), sample_rate=rate, channels=1, fmt=fmt)
        assert session.buffer.pcm16 and not plain.buffer.pcm16
        assert session.buffer._buf.nbytes * 2 == plain.buffer._buf.nbytes
        job = session.feed(data)
        assert job is not None
        want = expected[job.end_sample - WINDOW : job.end_sample]
        np.testing.assert_array_equal(job.window, stored(want))
        if fmt == "s16le":
            np.testing.assert_array_equal(job.window, want)
        else:
            np.testing.assert_allclose(job.window, want, atol=0.5 / 32768)
