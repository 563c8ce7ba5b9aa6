"""Tests for stream_server.training.mixes: building mixes, finding their windows, scoring
timelines."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stream_server.core.timeline import Segment
from stream_server.training.mixes import (
    Mix,
    MixPart,
    build_mixes,
    change_delays,
    changes_missed,
    label_at,
    label_changes,
    mix_window,
    percentile,
    seconds_right,
    window_ends,
    window_source,
)

RATE = 100  # samples per second: small numbers, same arithmetic
HOP = 100
WINDOW = 500

CLIPS = [("rock", 3000), ("rock", 1200), ("jazz", 3000), ("jazz", 6000), ("blues", 1500)]


def test_build_mixes_is_seeded_and_follows_the_rules() -> None:
    mixes = build_mixes(CLIPS, 30, seed=3, rate=RATE, hop=HOP, parts=6, min_s=10, max_s=40)
    assert mixes == build_mixes(CLIPS, 30, seed=3, rate=RATE, hop=HOP, parts=6)
    assert mixes != build_mixes(CLIPS, 30, seed=4, rate=RATE, hop=HOP, parts=6)
    lengths: set[int] = set()
    for mix in mixes:
        assert len(mix.parts) == 6
        for a, b in itertools.pairwise(mix.parts):
            assert a.label != b.label
        for part in mix.parts:
            label, clip_length = CLIPS[part.clip]
            assert part.label == label
            assert part.clip_start % HOP == 0 and part.length % HOP == 0
            assert part.clip_start >= 0 and part.clip_start + part.length <= clip_length
            # 10-40 s, no longer than the clip
            assert min(10 * RATE, clip_length) <= part.length <= 40 * RATE
            lengths.add(part.length)
    assert len(lengths) > 5
    assert {p.label for m in mixes for p in m.parts} == {"rock", "jazz", "blues"}


def test_build_mixes_prefers_unused_clips_and_refuses_one_genre() -> None:
    mixes = build_mixes([("a", 2000), ("b", 2000), ("b", 2000)], 5, seed=0, rate=RATE, hop=HOP,
                        parts=2)  # fmt: skip
    for mix in mixes:
        assert [p.label for p in mix.parts] in (["a", "b"], ["b", "a"])
    with pytest.raises(ValueError, match="two genres"):
        build_mixes([("a", 2000), ("a", 3000)], 1, seed=0, rate=RATE, hop=HOP)
    with pytest.raises(ValueError, match="min_s"):
        build_mixes(CLIPS, 1, seed=0, rate=RATE, hop=HOP, min_s=5, max_s=2)
    assert build_mixes(CLIPS, 0, seed=0, rate=RATE, hop=HOP) == []


def mix_of(*parts: tuple[str, int, int, int]) -> Mix:
    """Parts as ``(label, clip, clip_start, length)``."""
    return Mix(tuple(MixPart(c, label, s, n) for label, c, s, n in parts), RATE)


def test_mix_geometry_and_truth() -> None:
    mix = mix_of(("rock", 0, 200, 1000), ("jazz", 2, 0, 1500))
    assert mix.length == 2500
    assert mix.starts == [0, 1000]
    assert mix.duration_s == 25.0
    assert mix.boundaries_s() == [0.0, 10.0]
    assert [mix.truth_at(t) for t in (0.0, 9.99, 10.0, 24.0, 99.0)] == [
        "rock",
        "rock",
        "jazz",
        "jazz",
        "jazz",
    ]


def test_window_ends_follow_the_live_session() -> None:
    assert window_ends(499, WINDOW, HOP) == []
    assert window_ends(500, WINDOW, HOP) == [500]
    assert window_ends(1050, WINDOW, HOP) == [500, 600, 700, 800, 900, 1000]


def test_window_source_reuses_clip_windows_and_finds_straddling_ones() -> None:
    rng = np.random.default_rng(0)
    audio = [rng.standard_normal(n).astype(np.float32) for _, n in CLIPS]
    mix = mix_of(("rock", 0, 300, 1000), ("jazz", 3, 1200, 800), ("blues", 4, 0, 1500))
    straddling = 0
    for end in window_ends(mix.length, WINDOW, HOP):
        window = mix_window(mix, audio, end, WINDOW)
        source = window_source(mix, end, WINDOW, HOP)
        if source is None:
            straddling += 1
            continue
        part, k = source
        clip = mix.parts[part].clip
        clip_end = window_ends(CLIPS[clip][1], WINDOW, HOP)[k]
        np.testing.assert_array_equal(window, audio[clip][clip_end - WINDOW : clip_end])
    # windows end every hop; those ending inside the next part's first 4 hops straddle
    assert straddling == 2 * (WINDOW // HOP - 1)
    with pytest.raises(ValueError, match="inside the mix"):
        mix_window(mix, audio, mix.length + HOP, WINDOW)


def seg(start: float, end: float, genre: str) -> Segment:
    return Segment(start, end, genre, 0.5, 1)


def test_label_at_covers_start_to_end() -> None:
    segments = [seg(0, 10, "rock"), seg(10, 20, "jazz")]
    assert label_at(segments, -0.1) is None
    assert label_at(segments, 0.0) == "rock"
    assert label_at(segments, 10.0) == "jazz"
    assert label_at(segments, 20.0) == "jazz"
    assert label_at(segments, 20.1) is None
    assert label_at([seg(0, 5, "rock"), seg(7, 9, "jazz")], 6.0) is None  # a hole


def test_seconds_right_counts_midpoints() -> None:
    mix = mix_of(("rock", 0, 0, 1000), ("jazz", 2, 0, 1000))  # 20 s, change at 10 s
    assert seconds_right([seg(0, 10, "rock"), seg(10, 20, "jazz")], mix) == (20, 20)
    # the change shown 3 s late: seconds 10, 11 and 12 are wrong
    assert seconds_right([seg(0, 13, "rock"), seg(13, 20, "jazz")], mix) == (17, 20)
    # a timeline that starts late and ends early: uncovered seconds are wrong
    assert seconds_right([seg(2, 10, "rock"), seg(10, 18.4, "jazz")], mix) == (16, 20)
    assert seconds_right([], mix) == (0, 20)


def test_change_delays_and_changes_missed() -> None:
    mix = mix_of(("rock", 0, 0, 1000), ("jazz", 2, 0, 1000), ("blues", 4, 0, 1000))
    shown = [(float(t), "rock") for t in range(5, 14)]
    shown += [(float(t), "jazz") for t in range(14, 25)]
    shown += [(float(t), "rock") for t in range(25, 31)]
    # jazz shown 4 s after its change at 10 s; blues (from 20 s) never shown before the end
    assert change_delays(shown, mix) == [4.0, None]
    assert change_delays([(10.0, "jazz"), (20.0, "blues")], mix) == [0.0, 0.0]
    # a label already right at the change counts from the change
    assert change_delays([(9.0, "jazz"), (10.0, "jazz")], mix) == [0.0, None]
    timeline = [seg(0, 12, "rock"), seg(12, 30, "jazz")]
    assert changes_missed(timeline, mix) == 1
    assert changes_missed([seg(0, 10, "rock"), seg(10, 20, "jazz"), seg(20, 30, "blues")], mix) == 0


def test_label_changes_and_percentile() -> None:
    assert label_changes([]) == 0
    assert label_changes(["a", "a", "b", "b", "a"]) == 2
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 10.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 10.0], 90) == pytest.approx(7.9)
