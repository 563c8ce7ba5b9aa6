"""The dashboard's pure parts: state from typed server messages, metrics from Prometheus text."""

from __future__ import annotations

import pytest

from dashboard.metrics import key_metrics, parse_metrics, quantile_from_buckets
from dashboard.state import DashboardState, format_age, merge_segments, recent
from stream_server.core.timeline import Segment
from stream_server.messages import (
    GenreChange,
    GenreUpdate,
    ServerMessage,
    StreamEnded,
    StreamStarted,
    TrackChange,
    error,
)


def started(seq: int, sid: str = "s1") -> StreamStarted:
    return StreamStarted(
        type="stream.started", seq=seq, stream_id=sid, name="radio", kind="url", wall_time=100.0
    )


def update(seq: int, t: float, genre: str, conf: float, sid: str = "s1") -> GenreUpdate:
    return GenreUpdate(
        type="genre.update",
        seq=seq,
        stream_id=sid,
        stream_time_s=t,
        window_start_s=t - 5.0,
        wall_time=100.0 + t,
        top=[{"label": genre, "prob": conf}, {"label": "other", "prob": 1.0 - conf}],
        smoothed=[{"label": genre, "prob": conf}, {"label": "other", "prob": 1.0 - conf}],
        genre=genre,
        confidence=conf,
        latency_ms=12.5,
    )


def change(seq: int, t: float, previous: str | None, genre: str) -> GenreChange:
    return GenreChange(
        type="genre.change",
        seq=seq,
        stream_id="s1",
        stream_time_s=t,
        wall_time=100.0 + t,
        previous=previous,
        genre=genre,
        confidence=0.7,
    )


def sequence() -> list[ServerMessage]:
    return [
        started(1),
        update(2, 5.0, "jazz", 0.6),
        change(3, 5.0, None, "jazz"),
        update(4, 6.0, "jazz", 0.8),
        TrackChange(
            type="track.change",
            seq=5,
            stream_id="s1",
            title="So What",
            stream_time_s=6.5,
            wall_time=106.5,
        ),
        update(6, 7.0, "blues", 0.7),
        change(7, 7.0, "jazz", "blues"),
        StreamEnded(
            type="stream.ended",
            seq=8,
            stream_id="s1",
            reason="source ended",
            stream_time_s=7.5,
            wall_time=107.5,
            windows_computed=3,
            windows_skipped=0,
        ),
    ]


def test_state_follows_a_stream_from_start_to_end() -> None:
    state = DashboardState()
    assert all(state.apply(m) for m in sequence())
    view = state.streams["s1"]
    assert (view.name, view.kind, view.state, view.end_reason) == (
        "radio", "url", "ended", "source ended",
    )  # fmt: skip
    assert view.genre == "blues" and view.confidence == pytest.approx(0.7)
    assert view.updates == 3 and view.latency_ms == pytest.approx(12.5)
    assert view.stream_time_s == pytest.approx(7.5)
    assert view.title == "So What" and view.titles == [(6.5, "So What")]
    assert [(s.genre, s.start_s, s.end_s, s.updates) for s in view.segments()] == [
        ("jazz", 0.0, 6.0, 2),
        ("blues", 6.0, 7.0, 1),
    ]
    assert view.segments()[0].confidence == pytest.approx(0.7)
    assert [(c.previous, c.genre) for c in state.changes_of("s1")] == [
        (None, "jazz"),
        ("jazz", "blues"),
    ]
    assert state.last_seq == 8
    # recent probabilities: blues rising, jazz fading, both still present
    # the bars are the server's smoothed probabilities of the latest update, best first
    assert view.probabilities == pytest.approx({"blues": 0.7, "other": 0.3})
    assert list(view.probabilities) == ["blues", "other"]


def test_state_ignores_duplicates_unknown_types_and_malformed_messages() -> None:
    state = DashboardState()
    for m in sequence()[:4]:
        state.apply(m)
    before = state.snapshot()
    assert not state.apply(update(3, 9.0, "rock", 0.9))  # seq already seen
    assert not state.apply({"type": "genre.teleport", "seq": 50, "stream_id": "s1"})
    assert not state.apply({"type": "genre.update", "seq": 51, "stream_id": "s1"})  # fields gone
    assert not state.apply({"type": "genre.update", "seq": "x"})
    assert state.apply(error("resume_gap", "some messages are gone"))
    assert state.last_error == "resume_gap: some messages are gone"
    view = state.streams["s1"]
    assert view.genre == before.streams["s1"].genre == "jazz"
    assert view.updates == 2 and state.last_seq == 4
    # an update for a stream whose start was not seen still shows up
    assert state.apply(update(60, 5.0, "rock", 0.9, sid="s2"))
    assert state.streams["s2"].genre == "rock" and state.streams["s2"].kind == "?"


def test_a_smaller_seq_on_a_new_connection_means_the_server_restarted() -> None:
    state = DashboardState()
    for m in sequence()[:4]:
        state.apply(m)
    assert not state.apply(started(1, sid="s9"))  # same connection: a duplicate
    state.reconnected()
    assert state.apply(started(1, sid="s9"))
    assert state.streams["s1"].state == "ended"
    assert state.streams["s1"].end_reason == "server restarted"
    assert state.streams["s9"].state == "live" and state.last_seq == 1


def test_snapshot_is_independent_of_later_messages() -> None:
    state = DashboardState()
    for m in sequence()[:2]:
        state.apply(m)
    snap = state.snapshot()
    state.apply(update(9, 6.0, "rock", 0.9))
    assert snap.streams["s1"].genre == "jazz" and state.streams["s1"].genre == "rock"


def test_merge_keeps_the_stored_timeline_and_adds_the_live_part_after_it() -> None:
    # the stored timeline dated the change to rock back to 10 s; live showed it from 15 s
    stored = [Segment(0.0, 10.0, "jazz", 0.8, 6), Segment(10.0, 20.0, "rock", 0.6, 10)]
    live = [Segment(0.0, 15.0, "jazz", 0.8, 9), Segment(15.0, 30.0, "silence", 1.0, 15)]
    merged = merge_segments(stored, live)
    assert [(s.start_s, s.end_s, s.genre) for s in merged] == [
        (0.0, 10.0, "jazz"),
        (10.0, 20.0, "rock"),
        (20.0, 30.0, "silence"),
    ]
    assert merge_segments(stored, []) == stored
    assert merge_segments([], live) == live
    longer = merge_segments(stored, [Segment(15.0, 30.0, "rock", 0.7, 15)])
    assert [(s.start_s, s.end_s, s.genre) for s in longer] == [
        (0.0, 10.0, "jazz"),
        (10.0, 30.0, "rock"),
    ]
    assert stored[1].end_s == 20.0  # the stored list is not changed
    assert [s.genre for s in recent(merged, 0.25)] == ["rock", "silence"]  # last 15 s
    assert format_age(None) == "-" and format_age(59.9) == "59s"
    assert format_age(125) == "2m 05s" and format_age(3700) == "1h 01m"


METRICS = """\
# TYPE genrecast_windows_computed_total counter
genrecast_windows_computed_total {computed}
# TYPE genrecast_windows_skipped_total counter
genrecast_windows_skipped_total 3.0
# TYPE genrecast_active_streams gauge
genrecast_active_streams 2.0
# TYPE genrecast_latency_seconds histogram
genrecast_latency_seconds_bucket{{le="0.05"}} {a}
genrecast_latency_seconds_bucket{{le="0.1"}} {b}
genrecast_latency_seconds_bucket{{le="+Inf"}} {b}
genrecast_latency_seconds_count {b}
genrecast_latency_seconds_sum 1.0
"""


def test_key_metrics_from_prometheus_text() -> None:
    first = parse_metrics(METRICS.format(computed=100.0, a=90.0, b=100.0), wall_time=10.0)
    assert (first.windows_computed, first.windows_skipped, first.active_streams) == (100, 3, 2)
    km = key_metrics(first)
    assert km.windows_per_s is None and km.active_streams == 2 and km.windows_skipped == 3
    assert km.p99_latency_ms == pytest.approx(50.0 + 50.0 * 9 / 10)
    second = parse_metrics(METRICS.format(computed=150.0, a=140.0, b=150.0), wall_time=12.0)
    km = key_metrics(second, first)
    assert km.windows_per_s == pytest.approx(25.0)
    assert km.p99_latency_ms == pytest.approx(0.99 * 50 / 50 * 50.0)  # all 50 new ones < 50 ms
    assert quantile_from_buckets({}, 0.99) is None
    assert quantile_from_buckets({0.1: 0.0, float("inf"): 4.0}, 0.5) == pytest.approx(0.1)


def test_speech_and_silence_are_neutral_grey_in_the_charts() -> None:
    from dashboard.charts import GENRE_COLOURS, NEUTRAL, colour_scale, timeline_chart

    scale = colour_scale(["rock", "silence", "jazz", "speech", "blues"]).to_dict()
    colours = dict(zip(scale["domain"], scale["range"], strict=True))
    assert colours["speech"] == colours["silence"] == NEUTRAL
    genres = [colours[g] for g in ("blues", "jazz", "rock")]
    assert genres == list(GENRE_COLOURS[:3])  # sorted genres, distinct, never the grey
    assert NEUTRAL not in GENRE_COLOURS
    chart = timeline_chart(
        [Segment(0.0, 5.0, "rock", 0.8, 3), Segment(5.0, 9.0, "silence", 1.0, 4)],
        labels=["blues", "jazz", "rock"],
    ).to_dict()
    encoded = chart["layer"][0]["encoding"]["color"]["scale"]
    assert dict(zip(encoded["domain"], encoded["range"], strict=True)) == {
        "blues": GENRE_COLOURS[0],
        "jazz": GENRE_COLOURS[1],
        "rock": GENRE_COLOURS[2],
        "silence": NEUTRAL,
    }
