"""Tests for stream_server.core.timeline: segment building, gaps and CSV export."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math

import pytest

from stream_server.core.timeline import (
    CSV_FIELDS,
    Segment,
    TimelineBuilder,
    segments_from_json,
    segments_to_csv,
)


def feed(builder: TimelineBuilder, updates: list[tuple[float, str, float]]) -> list[Segment]:
    closed = []
    for i, (t, genre, conf) in enumerate(updates):
        seg = builder.add(t, genre, conf, window_start_s=t - 3.0 if i == 0 else None)
        if seg is not None:
            closed.append(seg)
    return closed


def rounded(segment: Segment | None) -> Segment | None:
    """The segment with its mean confidence rounded to 9 decimals."""
    if segment is None:
        return None
    return dataclasses.replace(segment, confidence=round(segment.confidence, 9))


def assert_contiguous(segments: list[Segment]) -> None:
    for prev, nxt in itertools.pairwise(segments):
        assert nxt.start_s == prev.end_s
    for seg in segments:
        assert seg.start_s <= seg.end_s


def test_empty_builder() -> None:
    b = TimelineBuilder()
    assert b.open_segment is None
    assert b.segments() == []


def test_first_segment_starts_at_the_window_start() -> None:
    b = TimelineBuilder()
    assert b.add(3.0, "rock", 0.8, window_start_s=0.0) is None
    assert b.open_segment == Segment(0.0, 3.0, "rock", 0.8, 1)


def test_first_segment_without_window_start_starts_at_its_update() -> None:
    b = TimelineBuilder()
    b.add(3.0, "rock", 0.8)
    assert b.open_segment == Segment(3.0, 3.0, "rock", 0.8, 1)


def test_segments_are_contiguous_and_cover_the_range() -> None:
    b = TimelineBuilder()
    updates = [
        (3.0, "rock", 0.6),
        (4.0, "rock", 0.7),
        (5.0, "rock", 0.8),
        (6.0, "jazz", 0.5),
        (7.0, "jazz", 0.9),
        (8.0, "rock", 0.4),
    ]
    closed = feed(b, updates)
    segs = b.segments()
    assert [s.genre for s in segs] == ["rock", "jazz", "rock"]
    assert closed == segs[:2]
    assert_contiguous(segs)
    assert segs[0].start_s == 0.0
    assert segs[-1].end_s == 8.0
    assert rounded(segs[0]) == Segment(0.0, 5.0, "rock", 0.7, 3)
    assert rounded(segs[1]) == Segment(5.0, 7.0, "jazz", 0.7, 2)
    assert rounded(segs[2]) == Segment(7.0, 8.0, "rock", 0.4, 1)
    assert sum(s.duration_s for s in segs) == pytest.approx(8.0)


def test_confidence_is_the_mean_of_the_updates() -> None:
    b = TimelineBuilder()
    confs = [0.2, 0.9, 0.55, 0.61, 0.33]
    for i, c in enumerate(confs):
        b.add(float(i), "pop", c, window_start_s=0.0)
    seg = b.open_segment
    assert seg is not None
    assert seg.updates == len(confs)
    assert seg.confidence == pytest.approx(sum(confs) / len(confs))
    closed = b.add(5.0, "metal", 1.0)
    assert closed is not None
    assert closed.confidence == pytest.approx(sum(confs) / len(confs))
    assert b.open_segment == Segment(4.0, 5.0, "metal", 1.0, 1)


def test_window_start_is_only_used_for_the_first_update() -> None:
    b = TimelineBuilder()
    b.add(3.0, "rock", 0.5, window_start_s=0.0)
    b.add(4.0, "rock", 0.5, window_start_s=1.0)
    b.add(5.0, "jazz", 0.5, window_start_s=2.0)
    assert [(s.start_s, s.end_s) for s in b.segments()] == [(0.0, 4.0), (4.0, 5.0)]


def test_open_segment_and_segments_are_copies() -> None:
    b = TimelineBuilder()
    b.add(1.0, "rock", 0.5, window_start_s=0.0)
    seg = b.open_segment
    assert seg is not None
    seg.genre = "changed"
    seg.end_s = 100.0
    b.segments()[0].updates = 42
    assert b.open_segment == Segment(0.0, 1.0, "rock", 0.5, 1)
    closed = b.add(2.0, "jazz", 0.5)
    assert closed is not None
    closed.start_s = -5.0
    assert b.segments()[0].start_s == 0.0


def test_gap_closes_the_open_segment_and_restarts_at_the_window_start() -> None:
    b = TimelineBuilder()
    b.add(3.0, "rock", 0.6, window_start_s=0.0)
    b.add(4.0, "rock", 0.8)
    closed = b.mark_gap(4.5)
    assert rounded(closed) == Segment(0.0, 4.0, "rock", 0.7, 2)
    assert b.open_segment is None
    # Same genre after the gap still starts a fresh segment, at its own window start.
    assert b.add(13.0, "rock", 0.9, window_start_s=10.0) is None
    b.add(14.0, "jazz", 0.5)
    segs = b.segments()
    assert [(s.start_s, s.end_s, s.genre) for s in segs] == [
        (0.0, 4.0, "rock"),
        (10.0, 13.0, "rock"),
        (13.0, 14.0, "jazz"),
    ]


def test_gap_without_window_start_starts_at_the_update() -> None:
    b = TimelineBuilder()
    b.add(3.0, "rock", 0.6, window_start_s=0.0)
    b.mark_gap(3.0)
    b.add(8.0, "rock", 0.6)
    assert b.segments()[1] == Segment(8.0, 8.0, "rock", 0.6, 1)


def test_segment_after_gap_never_starts_before_the_gap() -> None:
    b = TimelineBuilder()
    b.add(3.0, "rock", 0.6, window_start_s=0.0)
    b.mark_gap(5.0)
    b.add(6.0, "jazz", 0.6, window_start_s=2.0)  # window reaches back before the gap
    assert b.segments()[1].start_s == 5.0


def test_gap_with_nothing_open() -> None:
    b = TimelineBuilder()
    assert b.mark_gap(1.0) is None
    assert b.mark_gap(2.0) is None
    with pytest.raises(ValueError, match="before the last update"):
        b.mark_gap(1.5)
    with pytest.raises(ValueError, match="backwards"):
        b.add(1.0, "rock", 0.5)
    b.add(3.0, "rock", 0.5, window_start_s=0.0)
    assert b.segments() == [Segment(2.0, 3.0, "rock", 0.5, 1)]


def test_add_rejects_bad_input() -> None:
    b = TimelineBuilder()
    with pytest.raises(ValueError, match="stream_time_s"):
        b.add(math.nan, "rock", 0.5)
    with pytest.raises(ValueError, match="confidence"):
        b.add(1.0, "rock", math.inf)
    with pytest.raises(ValueError, match="window_start_s"):
        b.add(1.0, "rock", 0.5, window_start_s=math.nan)
    with pytest.raises(ValueError, match="after stream_time_s"):
        b.add(1.0, "rock", 0.5, window_start_s=1.5)
    b.add(2.0, "rock", 0.5, window_start_s=0.0)
    with pytest.raises(ValueError, match="backwards"):
        b.add(1.0, "jazz", 0.5)
    with pytest.raises(ValueError, match="before the last update"):
        b.mark_gap(1.0)
    with pytest.raises(ValueError, match="stream_time_s"):
        b.mark_gap(math.nan)
    assert b.segments() == [Segment(0.0, 2.0, "rock", 0.5, 1)]  # nothing changed


def test_equal_stream_times_are_allowed() -> None:
    b = TimelineBuilder()
    b.add(1.0, "rock", 0.5, window_start_s=1.0)
    b.add(1.0, "jazz", 0.5)
    assert [(s.start_s, s.end_s) for s in b.segments()] == [(1.0, 1.0), (1.0, 1.0)]


def test_to_dict_rounds_to_three_decimals() -> None:
    seg = Segment(1.23456, 7.00049, "hip hop", 0.876543, 5)
    assert seg.to_dict() == {
        "start_s": 1.235,
        "end_s": 7.0,
        "genre": "hip hop",
        "confidence": 0.877,
        "updates": 5,
    }
    assert tuple(seg.to_dict()) == CSV_FIELDS


def test_csv_export() -> None:
    segs = [
        Segment(0.0, 4.0, "rock", 2 / 3, 2),
        Segment(4.0, 9.5, "r&b, soul", 0.5, 6),
    ]
    text = segments_to_csv(segs)
    lines = text.splitlines()
    assert lines[0] == "start_s,end_s,genre,confidence,updates"
    assert lines[1] == "0.0,4.0,rock,0.667,2"
    assert lines[2] == '4.0,9.5,"r&b, soul",0.5,6'
    assert text.endswith("\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["genre"] for r in rows] == ["rock", "r&b, soul"]


def test_csv_export_of_no_segments_is_the_header() -> None:
    assert segments_to_csv([]) == "start_s,end_s,genre,confidence,updates\n"


def test_builder_segments_export_round_trip() -> None:
    b = TimelineBuilder()
    feed(b, [(3.0, "a", 0.5), (4.0, "b", 0.5), (5.0, "b", 0.7), (6.0, "a", 0.25)])
    rows = list(csv.DictReader(io.StringIO(segments_to_csv(b.segments()))))
    assert [(r["start_s"], r["end_s"], r["genre"]) for r in rows] == [
        ("0.0", "3.0", "a"),
        ("3.0", "5.0", "b"),
        ("5.0", "6.0", "a"),
    ]
    assert rows[1]["confidence"] == "0.6"


# -- dating changes back ------------------------------------------------------------------------


def test_a_change_dated_back_moves_the_later_updates_to_the_new_segment() -> None:
    b = TimelineBuilder(history=10)
    for t, c in [(5.0, 0.9), (6.0, 0.8), (7.0, 0.7), (8.0, 0.6), (9.0, 0.5)]:
        b.add(t, "rock", c, window_start_s=0.0)
    b.take_changes()
    assert b.open_times() == [5.0, 6.0, 7.0, 8.0, 9.0]
    closed = b.add(10.0, "jazz", 0.7, since_s=6.5, carried=[0.4, 0.5, 0.6])
    assert rounded(closed) == Segment(0.0, 6.5, "rock", 0.85, 2)
    segs = [rounded(s) for s in b.segments()]
    assert segs == [Segment(0.0, 6.5, "rock", 0.85, 2), Segment(6.5, 10.0, "jazz", 0.55, 4)]
    assert [(i, rounded(s)) for i, s in b.take_changes()] == list(enumerate(segs))
    assert b.take_changes() == []
    assert b.open_times() == [7.0, 8.0, 9.0, 10.0]


def test_a_change_dated_back_to_the_segment_start_relabels_it_whole() -> None:
    b = TimelineBuilder(history=10)
    b.add(5.0, "rock", 0.6, window_start_s=0.0)
    b.add(6.0, "rock", 0.6)
    assert b.add(7.0, "jazz", 0.9, since_s=-3.0, carried=[0.5, 0.7]) is None
    assert [rounded(s) for s in b.segments()] == [Segment(0.0, 7.0, "jazz", 0.7, 3)]


def test_a_relabelled_segment_merges_into_the_same_genre_before_it() -> None:
    b = TimelineBuilder(history=10)
    b.add(5.0, "rock", 0.8, window_start_s=0.0)
    b.add(6.0, "rock", 0.8)
    b.add(7.0, "jazz", 0.6)  # a change stored where it was confirmed: jazz from 6.0
    b.add(8.0, "jazz", 0.6)
    b.take_changes()
    # ...then rock is back, and it had been rock all along: the jazz segment goes
    assert b.add(9.0, "rock", 0.8, since_s=6.0, carried=[0.7, 0.7]) is None
    segs = [rounded(s) for s in b.segments()]
    assert segs == [Segment(0.0, 9.0, "rock", 0.76, 5)]
    # the store rewrites from the merged segment on and drops the one after it
    assert [(i, rounded(s)) for i, s in b.take_changes()] == [(0, segs[0])]


def test_no_merge_across_a_gap() -> None:
    b = TimelineBuilder(history=10)
    b.add(3.0, "rock", 0.8, window_start_s=0.0)
    b.mark_gap(3.0)
    b.add(8.0, "jazz", 0.6, window_start_s=3.0)
    b.add(9.0, "rock", 0.8, since_s=0.0, carried=[0.7])
    assert [(s.start_s, s.end_s, s.genre) for s in b.segments()] == [
        (0.0, 3.0, "rock"),
        (3.0, 9.0, "rock"),
    ]


def test_a_change_cannot_take_more_than_the_kept_updates() -> None:
    b = TimelineBuilder(history=2)
    for t in (1.0, 2.0, 3.0, 4.0):
        b.add(t, "rock", 0.5, window_start_s=0.0)
    assert b.open_times() == [3.0, 4.0]
    with pytest.raises(ValueError, match="kept updates"):
        b.add(5.0, "jazz", 0.5, since_s=2.5, carried=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="after stream_time_s"):
        b.add(5.0, "jazz", 0.5, since_s=6.0, carried=[])
    # the newest kept update moves; the segment ends at since_s, never before its start
    b.add(5.0, "jazz", 0.5, since_s=3.5, carried=[0.5])
    assert [(s.start_s, s.end_s, s.updates) for s in b.segments()] == [
        (0.0, 3.5, 3),
        (3.5, 5.0, 2),
    ]
    b.add(6.0, "rock", 0.5, since_s=-1.0, carried=[])
    assert [(s.start_s, s.end_s, s.genre) for s in b.segments()][1:] == [
        (3.5, 3.5, "jazz"),
        (3.5, 6.0, "rock"),
    ]


def test_without_history_since_is_ignored() -> None:
    b = TimelineBuilder()
    b.add(1.0, "rock", 0.5, window_start_s=0.0)
    b.add(2.0, "jazz", 0.5, since_s=0.5, carried=[0.5])
    assert [(s.start_s, s.end_s) for s in b.segments()] == [(0.0, 1.0), (1.0, 2.0)]
    assert b.open_times() == []


def test_take_changes_after_a_gap_is_the_closed_segment() -> None:
    b = TimelineBuilder(history=4)
    b.add(1.0, "rock", 0.5, window_start_s=0.0)
    b.add(2.0, "jazz", 0.5)
    assert [i for i, _ in b.take_changes()] == [0, 1]
    b.mark_gap(2.5)
    assert [(i, s.genre) for i, s in b.take_changes()] == [(1, "jazz")]
    assert b.mark_gap(3.0) is None
    assert b.take_changes() == []
    with pytest.raises(ValueError, match="history"):
        TimelineBuilder(history=-1)


def test_segments_read_back_from_json_give_the_same_csv() -> None:
    """The JSON timeline read back renders the CSV the server renders from its own segments
    (the dashboard's CSV export relies on it); rows that are not segments are skipped."""
    segments = [
        Segment(0.0, 12.34567, "rock", 0.812345, 12),
        Segment(12.34567, 20.0004, "silence", 1.0, 8),
    ]
    rows = [s.to_dict() for s in segments]
    assert segments_to_csv(segments_from_json(rows)) == segments_to_csv(segments)
    assert segments_from_json([*rows, {"genre": "x"}, "y"]) == segments_from_json(rows)
    assert segments_from_json(None) == []
