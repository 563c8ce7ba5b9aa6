"""The dashboard's pure parts: state from typed server messages, metrics from Prometheus text."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

from dashboard.metrics import key_metrics, parse_metrics, quantile_from_buckets
from dashboard.state import (
    DashboardState,
    ProbabilityHistory,
    format_age,
    merge_segments,
    recent,
)
from dashboard.svg import (
    bars_html,
    chip,
    heat_strip_html,
    sparkline_svg,
    stacked_area_html,
    timeline_html,
)
from dashboard.wall import default_selection, filter_rows, sort_rows, wall_html, wall_rows
from stream_server.core.palette import GENRE_COLOURS, NEUTRAL, label_colours
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


def test_one_colour_per_label_in_every_picture() -> None:
    colours = label_colours(["blues", "jazz", "rock"])
    segments = [Segment(0.0, 5.0, "rock", 0.8, 3), Segment(5.0, 9.0, "silence", 1.0, 4)]
    timeline = timeline_html(segments, colours, changes=[(5.0, "silence")], titles=[(1.0, "A")])
    fills = dict(re.findall(r'class="segment" data-genre="(\w+)" data-colour="(#\w+)"', timeline))
    assert fills == {"rock": colours["rock"], "silence": NEUTRAL}
    assert colours["rock"] == GENRE_COLOURS[2]  # the model's third label, whatever is shown
    assert "stream time (seconds of audio)" in timeline and "⚑ A" in timeline
    bars = bars_html({"jazz": 0.7, "silence": 0.3}, colours)
    assert re.findall(r'data-genre="(\w+)" style="width:[\d.]+%;background:(#\w+)"', bars) == [
        ("jazz", colours["jazz"]),
        ("silence", NEUTRAL),
    ]
    assert f'data-genre="jazz" data-colour="{colours["jazz"]}"' in chip("jazz", colours)
    spark = sparkline_svg([(0.0, 50.0, "jazz"), (50.0, 60.0, "rock")], colours, end_s=60.0)
    assert re.findall(r'data-genre="(\w+)"[^>]*fill="(#\w+)"', spark) == [
        ("jazz", colours["jazz"]),
        ("rock", colours["rock"]),
    ]


def test_the_probability_pictures_stack_to_one_and_show_raw_windows() -> None:
    colours = label_colours(["jazz", "rock"])
    times = np.array([5.0, 6.0, 7.0])
    smoothed = np.array([[0.75, 0.25]] * 3)
    area = stacked_area_html(times, ["jazz", "rock"], smoothed, colours, t0=5.0, t1=7.0)
    tops = re.findall(r'data-genre="(\w+)" points="([^"]+)"', area)
    assert [g for g, _ in tops] == ["jazz", "rock"]
    rock_top_y = float(tops[1][1].split()[0].split(",")[1])
    assert rock_top_y == 0.0  # the stack reaches 1 (the top of the picture)
    raw = np.array([[0.81, np.nan], [0.64, 0.04], [np.nan, np.nan]])
    strip = heat_strip_html(times, ["jazz", "rock"], raw, colours, t0=5.0, t1=7.0)
    cells = re.findall(r'data-genre="(\w+)"[^>]*fill-opacity="([\d.]+)"', strip)
    assert cells == [("jazz", "0.90"), ("jazz", "0.80"), ("rock", "0.20")]


def test_probability_history_keeps_the_last_updates_in_label_columns() -> None:
    history = ProbabilityHistory(capacity=3)
    for i in range(5):
        history.add(float(i), {"jazz": 0.9, "rock": 0.1}, {"jazz": 0.8, "pop": 0.2})
    times, smoothed, raw = history.recent()
    assert history.labels == ["jazz", "rock", "pop"]
    assert times.tolist() == [2.0, 3.0, 4.0]
    assert smoothed[0].tolist() == pytest.approx([0.9, 0.1, 0.0])
    assert raw[0, [0, 2]].tolist() == pytest.approx([0.8, 0.2]) and np.isnan(raw[0, 1])
    assert history.recent(3.5)[0].tolist() == [4.0]
    twin = copy.deepcopy(history)
    twin.add(9.0, {"jazz": 0.5}, {})
    assert history.recent()[0].tolist() == [2.0, 3.0, 4.0]


def wall_stream(sid: str, state: str, created: float, **extra: object) -> dict[str, object]:
    return {
        "stream_id": sid,
        "name": sid,
        "kind": "url",
        "state": state,
        "created_at": created,
        **extra,
    }


def test_the_wall_sorts_filters_and_selects_the_newest_live_stream() -> None:
    streams = [
        wall_stream("old", "live", 1.0, genre="jazz", confidence=0.6, lag_s=0.4),
        wall_stream("new", "live", 3.0, genre="rock", confidence=0.9, lag_s=0.1),
        wall_stream(
            "gone",
            "failed",
            5.0,
            reason="source failed 3 times in a row; last: connection refused by h:1",
            last_error="connection refused by h:1",
        ),
        wall_stream(
            "back", "live", 2.0, last_error="no audio for 10 s", last_error_at=1000.0 - 125
        ),
        wall_stream(
            "done",
            "ended",
            4.0,
            summary={
                "genres": [{"genre": "blues", "share": 0.47}],
                "duration_s": 30.0,
                "passages": [{"start_s": 0, "end_s": 30, "genre": "blues"}],
            },
        ),
    ]
    rows = wall_rows(streams, {}, now=1000.0)
    assert default_selection(rows) == "new"  # newest live, not the newer failed one
    order = ["new", "back", "old", "gone", "done"]
    assert [r.stream_id for r in sort_rows(rows, "newest")] == order
    assert [r.stream_id for r in sort_rows(rows, "confidence")][:2] == ["new", "old"]
    assert [r.stream_id for r in filter_rows(rows, "REFUSED")] == ["gone"]
    assert [r.stream_id for r in filter_rows(rows, "", show_ended=False)] == ["old", "new", "back"]
    errors = {r.stream_id: r.error for r in rows}
    assert errors["gone"].startswith("source failed 3 times")  # the whole reason
    assert errors["back"] == "no audio for 10 s (2m 05s ago)"  # recovered: when it was
    page = wall_html(sort_rows(rows, "name"), label_colours(["blues", "jazz", "rock"]))
    assert page.index('data-stream-id="new"') < page.index('data-stream-id="old"')
    assert "last: connection refused by h:1" in page
    assert 'data-genre="blues"' in page and "47%" in page  # an ended stream's main genre
    many = wall_rows([wall_stream(f"s{i}", "live", float(i)) for i in range(300)], {})
    assert "50 more: filter to narrow." in wall_html(many, {}, limit=250)
