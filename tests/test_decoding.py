"""Tests for stream_server.core.decoding: the offline, non-causal decoding of a whole file."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_server.core.decoding import (
    OfflineParams,
    absorb_short_runs,
    decode,
    forward_backward,
    segments_of,
    viterbi,
)
from stream_server.core.gate import MUSIC, SILENCE, SPEECH, GateParams
from stream_server.core.timeline import Segment

LABELS = ("blues", "jazz", "rock")


def path_score(log_e: np.ndarray, path: tuple[int, ...], cost: float) -> float:
    switches = sum(a != b for a, b in itertools.pairwise(path))
    return float(sum(log_e[t, s] for t, s in enumerate(path))) - cost * switches


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(2, 3),
    st.floats(0.0, 5.0),
    st.integers(0, 10_000),
)
def test_viterbi_is_the_best_path(steps: int, states: int, cost: float, seed: int) -> None:
    log_e = np.log(np.random.default_rng(seed).dirichlet(np.ones(states), steps))
    path = tuple(int(s) for s in viterbi(log_e, cost))
    best = max(path_score(log_e, p, cost) for p in itertools.product(range(states), repeat=steps))
    assert path_score(log_e, path, cost) == pytest.approx(best, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.floats(0.0, 5.0), st.integers(0, 10_000))
def test_forward_backward_are_the_exact_marginals(steps: int, cost: float, seed: int) -> None:
    states = 3
    log_e = np.log(np.random.default_rng(seed).dirichlet(np.ones(states), steps))
    switch = math.exp(-cost)
    norm = 1 + (states - 1) * switch
    marginals = np.zeros((steps, states))
    for path in itertools.product(range(states), repeat=steps):
        w = 1.0 / states
        for t, s in enumerate(path):
            w *= math.exp(log_e[t, s])
            if t:
                w *= (1.0 if path[t - 1] == s else switch) / norm
        for t, s in enumerate(path):
            marginals[t, s] += w
    marginals /= marginals.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(forward_backward(log_e, cost), marginals, atol=1e-9)


def test_switch_cost_keeps_a_short_blip_out() -> None:
    probs = np.array([[0.8, 0.1, 0.1]] * 5 + [[0.3, 0.6, 0.1]] + [[0.8, 0.1, 0.1]] * 5)
    log_e = np.log(probs)
    assert viterbi(log_e, 0.0).tolist()[5] == 1  # no cost: the blip shows
    assert set(viterbi(log_e, 3.0).tolist()) == {0}  # a blip costs two switches
    assert viterbi(np.zeros((0, 3)), 1.0).shape == (0,)
    assert forward_backward(np.zeros((0, 3)), 1.0).shape == (0, 3)


def test_absorb_short_runs() -> None:
    times = np.arange(10, dtype=np.float64)
    m, s, q = MUSIC, SPEECH, SILENCE
    # a one-window speech blip inside music goes; a 3-window silence (2 s span) stays
    kinds = [m, m, s, m, m, q, q, q, m, m]
    out = absorb_short_runs(kinds, times, 1.0).tolist()
    assert out == [m, m, m, m, m, q, q, q, m, m]
    # a short run between two different kinds stays
    assert absorb_short_runs([m, m, s, q, q], times[:5], 1.0).tolist() == [m, m, s, q, q]
    # at either end a short run takes its only neighbour's kind
    assert absorb_short_runs([s, m, m, m], times[:4], 1.0).tolist() == [m, m, m, m]
    assert absorb_short_runs([m, m, m, q], times[:4], 1.0).tolist() == [m, m, m, m]
    assert absorb_short_runs([m, s, s, m], times[:4], 0.0).tolist() == [m, s, s, m]
    assert absorb_short_runs([], [], 1.0).tolist() == []


def test_segments_of_places_boundaries() -> None:
    times = np.arange(5.0, 15.0)  # windows of 5 s ending every second
    starts = times - 5.0
    labels = ["rock"] * 4 + ["silence"] * 3 + ["jazz"] * 3
    conf = np.linspace(0.5, 0.95, 10)
    segs = segments_of(labels, conf, times, starts, 1.0)
    # next to silence: the start of the first window's newest hop; the timeline spans
    # the first window's start to the last window's end
    assert [(s.start_s, s.end_s, s.genre, s.updates) for s in segs] == [
        (0.0, 8.0, "rock", 4),
        (8.0, 11.0, "silence", 3),
        (11.0, 14.0, "jazz", 3),
    ]
    assert segs[0].confidence == pytest.approx(conf[:4].mean())
    # between two genres: midway between the two windows' centres
    segs = segments_of(["rock"] * 5 + ["jazz"] * 5, conf, times, starts, 1.0)
    assert [(s.start_s, s.end_s) for s in segs] == [(0.0, 7.0), (7.0, 14.0)]
    assert segments_of([], [], [], [], 1.0) == []


def test_segments_of_squeezed_run_joins_its_neighbour() -> None:
    times = np.arange(5.0, 9.0)
    starts = times - 5.0
    # silence -> speech -> ... puts the speech boundary before the silence one: squeezed out
    labels = ["silence", "speech", "rock", "rock"]
    segs = segments_of(labels, np.ones(4), times, starts, 1.0)
    assert [s.start_s for s in segs] == [0.0, 5.0]
    assert sum(s.updates for s in segs) == 4
    assert all(a.end_s == b.start_s for a, b in itertools.pairwise(segs))


def decode_simple(probs: np.ndarray, **kw: object) -> list[Segment]:
    times = 5.0 + np.arange(len(probs))
    args: dict[str, object] = {"gate": GateParams(), "hop_s": 1.0, "switch_cost": 4.0, **kw}
    return decode(LABELS, probs, times, times - 5.0, **args).segments  # type: ignore[arg-type]


def test_decode_a_change_at_the_right_place() -> None:
    rock, jazz = [0.1, 0.2, 0.7], [0.1, 0.7, 0.2]
    # for a change at 10 s the windows favour jazz once more than half of them is jazz: from
    # the window ending at 13 s (the 9th, centred at 10.5 s; the one before at 9.5 s)
    probs = np.array([rock] * 8 + [jazz] * 11)
    segs = decode_simple(probs)
    assert [(s.genre, s.start_s) for s in segs] == [("rock", 0.0), ("jazz", 10.0)]


def test_decode_silence_and_speech_with_the_gate() -> None:
    rock = [0.1, 0.2, 0.7]
    probs = np.array([rock] * 20)
    levels = np.full(20, -20.0)
    levels[8:12] = -90.0
    speech = np.zeros(20)
    speech[15:20] = 0.9
    decoded = decode(
        LABELS,
        probs,
        5.0 + np.arange(20),
        np.arange(20.0),
        level_dbfs=levels,
        speech=speech,
        gate=GateParams(),
        hop_s=1.0,
        switch_cost=4.0,
    )
    assert [(s.genre, s.start_s, s.end_s) for s in decoded.segments] == [
        ("rock", 0.0, 12.0),
        ("silence", 12.0, 16.0),
        ("rock", 16.0, 17.0),
        ("speech", 17.0, 24.0),
    ]
    assert decoded.labels[8] == "silence"
    assert decoded.confidences[8] == 1.0
    assert decoded.confidences[16] == pytest.approx(0.9)
    # the gate off: all music
    off = decode(
        LABELS,
        probs,
        5.0 + np.arange(20),
        np.arange(20.0),
        level_dbfs=levels,
        speech=speech,
        gate=GateParams(enabled=False),
        hop_s=1.0,
        switch_cost=4.0,
    )
    assert [s.genre for s in off.segments] == ["rock"]


def test_windows_mostly_silent_carry_no_genre_evidence() -> None:
    rock, jazz = [0.1, 0.2, 0.7], [0.1, 0.8, 0.1]
    # after a silence, the first windows see mostly silence and say "jazz": not taken
    probs = np.array([rock] * 6 + [rock] * 3 + [jazz] * 2 + [rock] * 6)
    levels = np.full(17, -20.0)
    levels[6:9] = -90.0
    segs = decode_simple(probs, level_dbfs=levels)
    assert [s.genre for s in segs] == ["rock", "silence", "rock"]


def test_offline_params() -> None:
    assert OfflineParams().decoding == "viterbi"
    assert "looking ahead" in OfflineParams().describe()
    assert OfflineParams("live").describe().startswith("live")
    with pytest.raises(ValueError, match="decoding"):
        OfflineParams("forward")
    with pytest.raises(ValueError, match="switch_cost"):
        OfflineParams(switch_cost=-1.0)
