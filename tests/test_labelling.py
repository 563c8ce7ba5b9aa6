"""Tests for stream_server.core.labelling: the live label, the gate in the stream, dating back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_server.core.gate import GateParams
from stream_server.core.labelling import (
    LabelInput,
    Labeller,
    LabelParams,
    LabelStep,
    lead_split,
    step_batch,
)
from stream_server.core.smoothing import SmoothingParams, SmoothingTable
from stream_server.core.timeline import Segment

LABELS = ("blues", "country", "jazz", "rock")
WINDOW_S = 5.0
ROCK = np.array([0.05, 0.1, 0.05, 0.8], dtype=np.float32)
COUNTRY = np.array([0.05, 0.8, 0.05, 0.1], dtype=np.float32)
JAZZ = np.array([0.1, 0.05, 0.8, 0.05], dtype=np.float32)
LOUD, QUIET = -20.0, -90.0


def labeller(**changes: object) -> Labeller:
    fields: dict[str, object] = {
        "smoothing": SmoothingParams(
            time_constant_s=2.0, switch_margin=0.1, min_dwell_s=2.0, stale_margin=1.0
        ),
        "gate": GateParams(silence_dbfs=-65.0, speech_threshold=0.5, min_run_s=1.0),
        "hop_s": 1.0,
        "backdate_max_s": 30.0,
    }
    fields.update(changes)
    return Labeller(LABELS, LabelParams(**fields))  # type: ignore[arg-type]


def feed(
    lab: Labeller,
    windows: list[tuple[np.ndarray, float, float]],
    first_end: float = WINDOW_S,
) -> list[LabelStep]:
    """Windows ``(probs, level, speech)`` ending every second from ``first_end``."""
    return [
        lab.step(first_end + k, first_end + k - WINDOW_S, probs, level, speech)
        for k, (probs, level, speech) in enumerate(windows)
    ]


def music(probs: np.ndarray, n: int) -> list[tuple[np.ndarray, float, float]]:
    return [(probs, LOUD, 0.0)] * n


def spans(segments: list[Segment]) -> list[tuple[float, float, str]]:
    return [(s.start_s, s.end_s, s.genre) for s in segments]


def changes(steps: list[LabelStep], first_end: float = WINDOW_S) -> list[tuple[float, str]]:
    return [(first_end + k, s.label) for k, s in enumerate(steps) if s.changed]


def assert_contiguous(segments: list[Segment]) -> None:
    for a, b in itertools.pairwise(segments):
        assert a.end_s == b.start_s
        assert a.start_s <= a.end_s


# -- lead_split ----------------------------------------------------------------------------


def test_lead_split_finds_where_the_new_genre_took_the_lead() -> None:
    probs = np.array([ROCK, ROCK, COUNTRY, ROCK, COUNTRY, COUNTRY, COUNTRY])
    fed = np.ones(7, dtype=bool)
    # from window 4 on, country outweighs rock; the lone country window at 2 does not pay for
    # the rock one after it
    assert lead_split(probs, 3, 1, fed) == 4
    # windows without genre evidence count for nothing
    fed[3] = False
    assert lead_split(probs, 3, 1, fed) == 2
    # all evidence for the new genre: from the first window
    assert lead_split(np.array([COUNTRY] * 3), 3, 1, np.ones(3, dtype=bool)) == 0


# -- genre changes -------------------------------------------------------------------------


def test_first_window_sets_the_label_at_once() -> None:
    step = labeller().step(5.0, 0.0, ROCK, LOUD, 0.0)
    assert (step.label, step.previous, step.changed, step.since_s) == ("rock", None, True, None)
    assert step.confidence == pytest.approx(0.8)
    assert step.segments == [(0, Segment(0.0, 5.0, "rock", step.confidence, 1))]


def test_a_genre_change_shows_live_after_the_dwell_and_is_stored_where_it_began() -> None:
    lab = labeller()
    # windows 5..14 s are rock; from the window ending at 15 s on (centred at 12.5 s) country
    steps = feed(lab, music(ROCK, 10) + music(COUNTRY, 10))
    shown = changes(steps)
    assert shown[0] == (5.0, "rock")
    assert len(shown) == 2
    t, label = shown[1]
    assert label == "country"
    assert 16.0 <= t <= 18.0  # confirmed after smoothing and 2 s of dwell
    assert steps[int(t - 5.0)].since_s == 12.0  # midway between the centres 11.5 and 12.5
    segments = lab.segments()
    assert spans(segments) == [(0.0, 12.0, "rock"), (12.0, 24.0, "country")]
    assert [s.updates for s in segments] == [10, 10]  # the windows judged rock, then country


def test_without_backdating_the_stored_change_is_where_it_was_confirmed() -> None:
    lab = labeller(backdate_max_s=0.0)
    steps = feed(lab, music(ROCK, 10) + music(COUNTRY, 10))
    t = changes(steps)[1][0]
    assert steps[int(t - 5.0)].since_s is None
    assert spans(lab.segments()) == [(0.0, t - 1.0, "rock"), (t - 1.0, 24.0, "country")]


def test_backdating_is_limited_to_backdate_max_s() -> None:
    lab = labeller(backdate_max_s=2.0)
    steps = feed(lab, music(ROCK, 10) + music(COUNTRY, 10))
    t = changes(steps)[1][0]
    assert lab.segments()[1].start_s == t - 2.0


def test_the_stale_genre_case_rock_at_008_while_country_leads_at_058() -> None:
    """On a rock clip "rock" stayed current at 0.08 while country led at 0.58, for 3 s."""
    smoothing = SmoothingParams(
        time_constant_s=0.0, switch_margin=0.1, min_dwell_s=3.0, stale_margin=0.3
    )
    lab = labeller(smoothing=smoothing)
    lab.step(5.0, 0.0, ROCK, LOUD)
    stale = np.array([0.2, 0.58, 0.14, 0.08], dtype=np.float32)
    step = lab.step(6.0, 1.0, stale, LOUD)
    assert step.changed  # at once, not after 3 s of dwell
    assert (step.previous, step.label) == ("rock", "country")
    assert step.confidence == pytest.approx(0.58)
    # without the rule, the dwell keeps the stale genre
    old = labeller(smoothing=SmoothingParams(0.0, 0.1, 3.0, stale_margin=1.0))
    old.step(5.0, 0.0, ROCK, LOUD)
    assert old.step(6.0, 1.0, stale, LOUD).label == "rock"


# -- the gate in the stream ----------------------------------------------------------------


def test_silence_shows_after_min_run_and_is_stored_from_its_first_hop() -> None:
    lab = labeller()
    windows = music(ROCK, 6) + [(ROCK, QUIET, 0.0)] * 4 + music(ROCK, 10)
    steps = feed(lab, windows)
    # silent hops: the windows ending at 11..14 s, i.e. the audio 10..14 s
    assert [s.label for s in steps[6:11]] == ["rock", "silence", "silence", "silence", "silence"]
    assert changes(steps)[1] == (12.0, "silence")
    assert steps[7].since_s == 10.0
    back = changes(steps)[2]
    assert back[1] == "rock"  # music around the silence keeps its genre
    assert steps[int(back[0] - 5.0)].since_s == 14.0
    assert spans(lab.segments()) == [
        (0.0, 10.0, "rock"),
        (10.0, 14.0, "silence"),
        (14.0, 24.0, "rock"),
    ]
    assert lab.segments()[1].confidence == 1.0


def test_a_blip_shorter_than_min_run_does_not_cut_the_music() -> None:
    lab = labeller()
    steps = feed(lab, [*music(ROCK, 5), (ROCK, QUIET, 0.0), *music(ROCK, 5)])
    assert [s.label for s in steps] == ["rock"] * 11
    assert spans(lab.segments()) == [(0.0, 15.0, "rock")]
    # min_run_s 0: every window shows its own kind
    lab = labeller(gate=GateParams(min_run_s=0.0))
    steps = feed(lab, [*music(ROCK, 5), (ROCK, QUIET, 0.0), *music(ROCK, 5)])
    assert [s.label for s in steps][4:7] == ["rock", "silence", "rock"]


def test_speech_shows_as_its_own_label_and_does_not_move_the_genre() -> None:
    lab = labeller()
    # speech windows whose genre probabilities say jazz: they must not drag the genre
    windows = music(ROCK, 6) + [(JAZZ, LOUD, 0.9)] * 8 + music(ROCK, 6)
    steps = feed(lab, windows)
    labels = [s.label for s in steps]
    assert labels[:7] == ["rock"] * 7
    assert labels[7:14] == ["speech"] * 7
    assert set(labels[15:]) == {"rock"}
    speech = steps[8]
    assert speech.confidence == pytest.approx(0.9)
    assert speech.smoothed.argmax() == LABELS.index("rock")  # smoothing untouched
    kinds = [s.kind for s in steps]
    assert kinds[6:14] == [1] * 8
    segments = lab.segments()
    assert [s.genre for s in segments] == ["rock", "speech", "rock"]
    assert_contiguous(segments)
    # speech is judged on whole windows: it began midway between the centres of the last
    # music window (ending at 10 s) and the first speech window (ending at 11 s)
    assert segments[1].start_s == 8.0


def test_a_music_window_mostly_of_a_silence_that_just_ended_is_not_fed() -> None:
    lab = labeller()
    windows = music(ROCK, 6) + [(ROCK, QUIET, 0.0)] * 4 + music(JAZZ, 2) + music(ROCK, 6)
    steps = feed(lab, windows)
    # the two jazz-looking windows right after the silence hold mostly silence: not fed
    assert steps[11].smoothed.argmax() == LABELS.index("rock")
    assert [s.genre for s in lab.segments()] == ["rock", "silence", "rock"]


def test_a_gap_closes_the_segment_and_restarts_smoothing() -> None:
    lab = labeller()
    feed(lab, music(ROCK, 3))
    tail = lab.mark_gap(8.0)
    assert [(i, s.end_s) for i, s in tail] == [(0, 7.0)]
    steps = feed(lab, music(COUNTRY, 3), first_end=20.0)
    assert steps[0].smoothed.argmax() == LABELS.index("country")  # smoothing restarted
    assert spans(lab.segments())[1][0] == 15.0


# -- the stored tail is the timeline ---------------------------------------------------------

window_strategy = st.tuples(
    st.sampled_from([ROCK, COUNTRY, JAZZ]),
    st.sampled_from([LOUD, LOUD, LOUD, QUIET]),
    st.sampled_from([0.0, 0.0, 0.0, 0.9]),
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(window_strategy, min_size=1, max_size=60),
    st.floats(0.0, 4.0),
    st.floats(0.0, 3.0),
    st.sampled_from([0.2, 0.5, 1.0]),
    st.sampled_from([0.0, 3.0, 30.0]),
    st.lists(st.integers(0, 59), max_size=2),
)
def test_stored_tails_rebuild_the_timeline(
    windows: list[tuple[np.ndarray, float, float]],
    tau: float,
    dwell: float,
    stale: float,
    backdate: float,
    gaps: list[int],
) -> None:
    """Writing each step's tail and dropping what follows it (as the store does) always holds
    exactly the timeline: contiguous but for gaps, in order, never empty of updates."""
    lab = labeller(smoothing=SmoothingParams(tau, 0.1, dwell, stale), backdate_max_s=backdate)
    stored: list[Segment] = []

    def write(tail: list[tuple[int, Segment]]) -> None:
        if tail:
            first = tail[0][0]
            assert [i for i, _ in tail] == list(range(first, first + len(tail)))
            assert first <= len(stored)
            del stored[first:]
            stored.extend(s for _, s in tail)

    t = WINDOW_S
    gap_times = []
    for k, (probs, level, speech) in enumerate(windows):
        if k in gaps and k:
            write(lab.mark_gap(t - 1.0))
            gap_times.append(t - 1.0)
            t += 10.0
        write(lab.step(t, t - WINDOW_S, probs, level, speech).segments)
        t += 1.0
    assert stored == lab.segments()
    assert sum(s.updates for s in stored) == len(windows)
    for a, b in itertools.pairwise(stored):
        assert a.start_s <= a.end_s <= b.start_s
        assert a.end_s == b.start_s or a.end_s in gap_times
        assert a.updates >= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shared_table_in_batches_labels_as_each_stream_alone(seed: int) -> None:
    """Streams labelled together (one table, one call per batch, batches of random make-up,
    a stream twice in some) give the same steps and timelines as each stream on its own."""
    rng = np.random.default_rng(seed)
    base = labeller()
    table = SmoothingTable(len(LABELS), base.params.smoothing, capacity=2)
    streams = 12
    together = [Labeller(LABELS, base.params, table) for _ in range(streams)]
    alone = [labeller() for _ in range(streams)]
    clocks = [WINDOW_S] * streams
    genres = [ROCK, COUNTRY, JAZZ]
    mood = [0] * streams
    compared = 0
    for _ in range(120):
        batch = [int(i) for i in rng.integers(0, streams, size=rng.integers(1, 10))]
        windows: list[LabelInput] = []
        for i in batch:
            if rng.random() < 0.08:
                mood[i] = int(rng.integers(3))
            clocks[i] += 1.0
            probs = genres[mood[i]] + rng.uniform(0, 0.5, size=len(LABELS)).astype(np.float32)
            level = QUIET if rng.random() < 0.05 else LOUD
            speech = 0.9 if rng.random() < 0.1 else 0.0
            if rng.random() < 0.02:
                probs = np.full(len(LABELS), np.nan, np.float32)  # refused, alone and together
            windows.append(
                LabelInput(clocks[i], clocks[i] - WINDOW_S, probs / probs.sum(), level, speech)
            )
        got = step_batch([together[i] for i in batch], windows)
        for i, window, step in zip(batch, windows, got, strict=True):
            try:
                want: LabelStep | ValueError = alone[i].step(
                    window.time_s,
                    window.window_start_s,
                    window.probs,
                    window.level_dbfs,
                    window.speech_prob,
                )
            except ValueError as exc:
                want = exc
            if isinstance(want, ValueError):
                assert isinstance(step, ValueError) and str(step) == str(want)
                continue
            assert isinstance(step, LabelStep)
            assert (step.label, step.kind, step.previous, step.changed, step.since_s) == (
                want.label,
                want.kind,
                want.previous,
                want.changed,
                want.since_s,
            )
            assert step.confidence == want.confidence
            np.testing.assert_array_equal(step.smoothed, want.smoothed)
            assert step.segments == want.segments
            compared += 1
    assert compared > 400
    for mine, theirs in zip(together, alone, strict=True):
        assert mine.segments() == theirs.segments()
    assert sum(len(lab.segments()) for lab in alone) > 2 * streams  # labels did change
    for lab in together:
        lab.close()
    assert table.in_use == 0
