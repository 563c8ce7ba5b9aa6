"""A stream's summary from its timeline."""

from __future__ import annotations

from stream_server.core.summary import MAX_PASSAGES, summarize
from stream_server.core.timeline import Segment


def seg(start: float, end: float, genre: str, updates: int = 1) -> Segment:
    return Segment(start, end, genre, 0.8, updates)


def test_shares_are_seconds_of_each_genre_largest_first() -> None:
    summary = summarize([seg(0, 10, "rock", 10), seg(10, 40, "jazz", 30), seg(40, 50, "rock", 10)])
    assert summary.genre == "jazz"
    assert [(g.genre, g.seconds, round(g.share, 3)) for g in summary.genres] == [
        ("jazz", 30.0, 0.6),
        ("rock", 20.0, 0.4),
    ]
    assert summary.duration_s == 50.0
    assert summary.windows == 50
    assert [(p.start_s, p.end_s, p.genre) for p in summary.passages] == [
        (0, 10, "rock"),
        (10, 40, "jazz"),
        (40, 50, "rock"),
    ]


def test_neighbouring_segments_of_one_genre_are_one_passage() -> None:
    summary = summarize([seg(0, 5, "rock", 5), seg(8, 12, "rock", 4), seg(12, 13, "pop", 1)])
    assert [(p.start_s, p.end_s, p.genre) for p in summary.passages] == [
        (0, 12, "rock"),
        (12, 13, "pop"),
    ]


def test_a_single_update_still_has_a_share() -> None:
    summary = summarize([seg(5, 5, "blues")])
    assert summary.genre == "blues"
    assert summary.genres[0].share == 1.0
    assert summary.to_dict()["windows"] == 1


def test_an_empty_timeline_has_no_genre() -> None:
    summary = summarize([])
    assert summary.genre is None
    assert summary.to_dict() == {
        "genre": None,
        "duration_s": 0.0,
        "windows": 0,
        "genres": [],
        "passages": [],
        "more_passages": 0,
    }


def test_the_latest_passages_are_kept_and_earlier_ones_counted() -> None:
    segments = [seg(i, i + 1, "rock" if i % 2 else "pop") for i in range(MAX_PASSAGES + 7)]
    summary = summarize(segments)
    assert len(summary.passages) == MAX_PASSAGES
    assert summary.more_passages == 7  # the earliest ones: the latest are kept
    assert summary.passages[-1].end_s == segments[-1].end_s
    assert summary.passages[0].start_s == 7.0
