"""Tests for stream_server.core.smoothing: exponential smoothing and the genre hysteresis rule."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_server.core.smoothing import (
    GenreChange,
    GenreTracker,
    ProbabilitySmoother,
    SmoothingParams,
)

Array = npt.NDArray[np.float64] | npt.NDArray[np.float32]


def vec(*values: float) -> npt.NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def rounded(change: GenreChange | None) -> GenreChange | None:
    """The change with its float32-derived confidence rounded to 6 decimals."""
    if change is None:
        return None
    return dataclasses.replace(change, confidence=round(change.confidence, 6))


# --------------------------------------------------------------------------- SmoothingParams


def test_params_defaults() -> None:
    p = SmoothingParams()
    assert (p.time_constant_s, p.switch_margin, p.min_dwell_s, p.stale_margin) == (
        2.0,
        0.2,
        4.0,
        0.5,
    )


@pytest.mark.parametrize("field", ["time_constant_s", "switch_margin", "min_dwell_s"])
@pytest.mark.parametrize("value", [-0.001, -5.0, math.nan, math.inf])
def test_params_reject_invalid_values_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SmoothingParams(**{field: value})


def test_params_accept_zero() -> None:
    p = SmoothingParams(time_constant_s=0.0, switch_margin=0.0, min_dwell_s=0.0)
    assert p.min_dwell_s == 0.0


# --------------------------------------------------------------------------- ProbabilitySmoother


def test_smoother_constructor_validation() -> None:
    with pytest.raises(ValueError, match="num_labels"):
        ProbabilitySmoother(0, 4.0)
    with pytest.raises(ValueError, match="time_constant_s"):
        ProbabilitySmoother(3, -1.0)
    s = ProbabilitySmoother(3, 2.5)
    assert s.num_labels == 3
    assert s.time_constant_s == 2.5


def test_first_update_is_passed_through_as_a_float32_copy() -> None:
    s = ProbabilitySmoother(3, 4.0)
    p = vec(0.2, 0.5, 0.3)
    out = s.update(p, 10.0)
    assert out.dtype == np.float32
    assert out.shape == (3,)
    np.testing.assert_allclose(out, p, rtol=1e-6)
    out[0] = 99.0
    assert p[0] == np.float32(0.2)  # input untouched, output is a copy
    out2 = s.update(p, 10.0)  # dt = 0: alpha = 0, state unchanged by the caller's edit
    np.testing.assert_allclose(out2, p, rtol=1e-6)


def test_alpha_formula() -> None:
    s = ProbabilitySmoother(2, 4.0)
    assert s.alpha(0.0) == 0.0
    assert s.alpha(4.0) == pytest.approx(1 - math.exp(-1.0), rel=1e-12)
    assert s.alpha(1.0) == pytest.approx(1 - math.exp(-0.25), rel=1e-12)
    assert ProbabilitySmoother(2, 0.0).alpha(0.0) == 1.0


@pytest.mark.parametrize("dt", [0.5, 1.0, 2.0, 7.3])
def test_update_blends_with_alpha_from_the_stream_time_step(dt: float) -> None:
    tc = 4.0
    s = ProbabilitySmoother(3, tc)
    p0 = np.array([0.7, 0.2, 0.1])
    p1 = np.array([0.1, 0.3, 0.6])
    s.update(p0.astype(np.float32), 5.0)
    out = s.update(p1.astype(np.float32), 5.0 + dt)
    a = 1 - math.exp(-dt / tc)
    np.testing.assert_allclose(out, (1 - a) * p0 + a * p1, rtol=1e-5)


def test_uneven_steps_use_their_own_dt() -> None:
    tc = 2.0
    s = ProbabilitySmoother(2, tc)
    inputs = [(0.0, [1.0, 0.0]), (0.5, [0.0, 1.0]), (3.0, [0.0, 1.0]), (3.25, [1.0, 0.0])]
    state = None
    last_t = 0.0
    for t, p in inputs:
        arr = np.array(p)
        if state is None:
            state = arr
        else:
            a = 1 - math.exp(-(t - last_t) / tc)
            state = (1 - a) * state + a * arr
        last_t = t
        out = s.update(arr.astype(np.float32), t)
        np.testing.assert_allclose(out, state, rtol=1e-5, atol=1e-7)


def test_time_constant_zero_disables_smoothing() -> None:
    s = ProbabilitySmoother(3, 0.0)
    for t, p in enumerate([vec(0.7, 0.2, 0.1), vec(0.1, 0.1, 0.8), vec(0.3, 0.4, 0.3)]):
        np.testing.assert_allclose(s.update(p, float(t)), p, rtol=1e-6)


def test_output_is_renormalised() -> None:
    s = ProbabilitySmoother(3, 4.0)
    out = s.update(vec(2.0, 1.0, 1.0), 0.0)
    np.testing.assert_allclose(out, [0.5, 0.25, 0.25], rtol=1e-6)
    out = s.update(vec(0.0, 3.0, 1.0), 4.0)  # unnormalised input, blended then renormalised
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)
    a = 1 - math.exp(-1.0)
    expected = (1 - a) * np.array([0.5, 0.25, 0.25]) + a * np.array([0.0, 3.0, 1.0])
    np.testing.assert_allclose(out, expected / expected.sum(), rtol=1e-5)
    np.testing.assert_allclose(
        ProbabilitySmoother(2, 0.0).update(vec(3.0, 1.0), 0.0), [0.75, 0.25], rtol=1e-6
    )


def test_reset_forgets_history() -> None:
    s = ProbabilitySmoother(2, 4.0)
    s.update(vec(1.0, 0.0), 0.0)
    s.update(vec(1.0, 0.0), 100.0)
    s.reset()
    out = s.update(vec(0.0, 1.0), 5.0)  # earlier time is fine after a reset
    np.testing.assert_allclose(out, [0.0, 1.0])


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.zeros((2, 2), dtype=np.float32), "1-D"),
        (np.zeros(0, dtype=np.float32), "1-D"),
        (vec(0.5, 0.5), r"shape \(3,\)"),
        (vec(0.5, math.nan, 0.5), "non-finite"),
        (vec(0.5, math.inf, 0.5), "non-finite"),
        (vec(1.5, -0.5, 0.0), "negative"),
        (vec(0.0, 0.0, 0.0), "all zero"),
    ],
)
def test_smoother_rejects_bad_vectors(probs: Array, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProbabilitySmoother(3, 4.0).update(probs, 0.0)


def test_smoother_rejects_bad_times() -> None:
    s = ProbabilitySmoother(2, 4.0)
    with pytest.raises(ValueError, match="finite"):
        s.update(vec(0.5, 0.5), math.nan)
    s.update(vec(0.5, 0.5), 2.0)
    with pytest.raises(ValueError, match="backwards"):
        s.update(vec(0.5, 0.5), 1.999)


# --------------------------------------------------------------------------- GenreTracker


def test_first_update_sets_current_immediately() -> None:
    params = SmoothingParams()
    tr = GenreTracker(params)
    assert tr.params is params
    assert tr.current is None
    assert tr.confidence == 0.0
    change = tr.update(vec(0.1, 0.6, 0.3), 2.0)
    assert rounded(change) == GenreChange(2.0, None, 1, 0.6)
    assert tr.current == 1
    assert tr.confidence == pytest.approx(0.6)
    assert tr.update(vec(0.2, 0.5, 0.3), 3.0) is None
    assert tr.confidence == pytest.approx(0.5)  # follows the current genre every update


def boundary_tracker(margin: float = 0.25, dwell: float = 3.0) -> GenreTracker:
    tr = GenreTracker(SmoothingParams(switch_margin=margin, min_dwell_s=dwell, stale_margin=1.0))
    tr.update(vec(0.625, 0.375), 0.0)
    return tr


def test_switch_happens_exactly_when_margin_is_met_for_min_dwell() -> None:
    tr = boundary_tracker()
    challenger = vec(0.375, 0.625)  # lead exactly 0.25 == margin
    assert tr.update(challenger, 1.0) is None
    assert tr.challenger == 1
    assert tr.update(challenger, 2.0) is None
    assert tr.update(challenger, 3.999) is None  # 2.999 s of dwell: not yet
    assert tr.current == 0
    assert tr.confidence == pytest.approx(0.375)
    change = tr.update(challenger, 4.0)  # exactly 3 s after the challenger first led
    assert rounded(change) == GenreChange(4.0, 0, 1, 0.625)
    assert tr.current == 1
    assert tr.challenger is None
    assert tr.confidence == pytest.approx(0.625)


def test_margin_boundary_in_float32_counts_as_reached() -> None:
    tr = GenreTracker(SmoothingParams(switch_margin=0.1, min_dwell_s=0.0))
    tr.update(vec(0.55, 0.45), 0.0)
    change = tr.update(vec(0.45, 0.55), 1.0)  # float32 lead is 0.1 up to rounding
    assert change is not None
    assert change.current == 1


def test_lead_just_below_margin_never_switches() -> None:
    tr = boundary_tracker()
    for t in range(1, 100):
        assert tr.update(vec(0.38, 0.62), float(t)) is None  # lead 0.24 < 0.25
    assert tr.current == 0
    assert tr.challenger is None


def test_dropping_below_margin_resets_the_dwell_clock() -> None:
    tr = boundary_tracker()
    ahead, behind = vec(0.3, 0.7), vec(0.45, 0.55)  # lead 0.4 / lead 0.1 (< margin)
    assert tr.update(ahead, 1.0) is None
    assert tr.update(ahead, 3.0) is None
    assert tr.update(behind, 3.5) is None  # clock reset
    assert tr.challenger is None
    assert tr.update(ahead, 4.0) is None  # clock restarts at 4.0
    assert tr.update(ahead, 6.5) is None
    assert tr.update(ahead, 6.999) is None
    change = tr.update(ahead, 7.0)
    assert change is not None
    assert (change.stream_time_s, change.previous, change.current) == (7.0, 0, 1)


def test_a_different_challenger_restarts_the_dwell_clock() -> None:
    tr = GenreTracker(SmoothingParams(switch_margin=0.1, min_dwell_s=3.0, stale_margin=1.0))
    tr.update(vec(0.6, 0.2, 0.2), 0.0)
    one, two = vec(0.2, 0.6, 0.2), vec(0.2, 0.25, 0.55)
    assert tr.update(one, 1.0) is None
    assert tr.update(one, 3.5) is None
    assert tr.update(two, 4.0) is None  # label 2 takes over as challenger: clock restarts
    assert tr.challenger == 2
    assert tr.update(two, 6.5) is None
    change = tr.update(two, 7.0)
    assert rounded(change) == GenreChange(7.0, 0, 2, 0.55)


def test_zero_dwell_switches_on_the_first_update_ahead() -> None:
    tr = boundary_tracker(margin=0.1, dwell=0.0)
    change = tr.update(vec(0.3, 0.7), 0.5)
    assert change is not None
    assert change.current == 1


def test_tie_does_not_count_as_ahead_even_with_zero_margin() -> None:
    tr = GenreTracker(SmoothingParams(switch_margin=0.0, min_dwell_s=0.0))
    tr.update(vec(0.4, 0.6), 0.0)
    assert tr.update(vec(0.5, 0.5), 1.0) is None  # argmax is 0 but it does not beat 1
    assert tr.current == 1
    change = tr.update(vec(0.51, 0.49), 2.0)
    assert change is not None
    assert change.current == 0


def test_reset_forgets_current_and_challenger() -> None:
    tr = boundary_tracker()
    tr.update(vec(0.2, 0.8), 1.0)
    tr.reset()
    assert tr.current is None
    assert tr.challenger is None
    assert tr.confidence == 0.0
    change = tr.update(vec(0.1, 0.2, 0.7), 0.5)  # new label count, earlier time: fine after reset
    assert rounded(change) == GenreChange(0.5, None, 2, 0.7)


def test_tracker_rejects_bad_input() -> None:
    tr = GenreTracker(SmoothingParams())
    with pytest.raises(ValueError, match="1-D"):
        tr.update(np.ones((1, 2), dtype=np.float32), 0.0)
    tr.update(vec(0.5, 0.3, 0.2), 1.0)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        tr.update(vec(0.5, 0.5), 2.0)
    with pytest.raises(ValueError, match="backwards"):
        tr.update(vec(0.5, 0.3, 0.2), 0.5)
    with pytest.raises(ValueError, match="finite"):
        tr.update(vec(0.5, 0.3, 0.2), math.inf)


#: The classic hysteresis, without the stale-genre rule.
HYSTERESIS = SmoothingParams(
    time_constant_s=4.0, switch_margin=0.1, min_dwell_s=3.0, stale_margin=1.0
)


def run_pipeline(
    raw: Array, hop_s: float = 1.0, params: SmoothingParams | None = None
) -> list[GenreChange]:
    params = params or HYSTERESIS
    smoother = ProbabilitySmoother(raw.shape[1], params.time_constant_s)
    tracker = GenreTracker(params)
    changes = []
    for i, p in enumerate(raw):
        change = tracker.update(smoother.update(p, i * hop_s), i * hop_s)
        if change is not None:
            changes.append(change)
    return changes


def flips(raw: Array) -> int:
    arg = raw.argmax(axis=1)
    return int(np.count_nonzero(arg[1:] != arg[:-1]))


def noisy(base: Array, rng: np.random.Generator, scale: float) -> npt.NDArray[np.float32]:
    x = np.clip(base + rng.normal(0.0, scale, size=base.shape), 1e-3, None)
    out: npt.NDArray[np.float32] = (x / x.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def test_no_flicker_on_alternating_noisy_input() -> None:
    rng = np.random.default_rng(1234)
    n = 120
    base = np.tile(np.array([[0.42, 0.38, 0.2], [0.36, 0.44, 0.2]]), (n // 2, 1))
    raw = noisy(base, rng, 0.05)
    assert flips(raw) > n // 3  # the raw argmax flips often
    changes = run_pipeline(raw)
    assert len(changes) == 1  # only the initial assignment
    assert changes[0].previous is None
    # Control: with smoothing and hysteresis disabled the same input flickers.
    assert len(run_pipeline(raw, params=SmoothingParams(0.0, 0.0, 0.0, 1.0))) == flips(raw) + 1


def test_noisy_real_switch_is_reported_once() -> None:
    rng = np.random.default_rng(99)
    first = np.tile([0.45, 0.35, 0.2], (40, 1))
    second = np.tile([0.25, 0.55, 0.2], (40, 1))
    raw = noisy(np.vstack([first, second]), rng, 0.08)
    assert flips(raw) >= 10
    changes = run_pipeline(raw)
    assert [(c.previous, c.current) for c in changes] == [(None, 0), (0, 1)]
    assert 40.0 < changes[1].stream_time_s < 52.0


@st.composite
def update_sequences(draw: st.DrawFn) -> tuple[SmoothingParams, list[tuple[float, list[float]]]]:
    params = SmoothingParams(
        time_constant_s=draw(st.sampled_from([0.0, 0.5, 2.0])),
        switch_margin=draw(st.sampled_from([0.0, 0.05, 0.2])),
        min_dwell_s=draw(st.floats(0.0, 5.0, allow_nan=False)),
        stale_margin=draw(st.sampled_from([0.0, 0.3, 0.6, 1.0])),
    )
    labels = draw(st.integers(2, 4))
    n = draw(st.integers(1, 60))
    steps = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(0.01, 3.0, allow_nan=False)),
            min_size=n,
            max_size=n,
        )
    )
    vectors = draw(
        st.lists(
            st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=labels, max_size=labels).filter(
                lambda v: sum(v) > 1e-3
            ),
            min_size=n,
            max_size=n,
        )
    )
    t = draw(st.floats(0.0, 1000.0, allow_nan=False))
    seq = []
    for dt, v in zip(steps, vectors, strict=True):
        t += dt
        seq.append((t, v))
    return params, seq


@settings(max_examples=300, deadline=None)
@given(update_sequences())
def test_changes_are_never_closer_than_min_dwell(
    case: tuple[SmoothingParams, list[tuple[float, list[float]]]],
) -> None:
    params, seq = case
    params = dataclasses.replace(params, stale_margin=1.0)  # the rule that may cut the dwell
    smoother = ProbabilitySmoother(len(seq[0][1]), params.time_constant_s)
    tracker = GenreTracker(params)
    times = []
    for t, v in seq:
        change = tracker.update(smoother.update(np.array(v, dtype=np.float32), t), t)
        if change is not None:
            times.append(change.stream_time_s)
    assert times
    assert times[0] == seq[0][0]
    for earlier, later in itertools.pairwise(times):
        assert later - earlier >= params.min_dwell_s


@settings(max_examples=300, deadline=None)
@given(update_sequences())
def test_the_current_genre_is_never_stale(
    case: tuple[SmoothingParams, list[tuple[float, list[float]]]],
) -> None:
    """After every update the current genre is less than ``stale_margin`` below the leader."""
    params, seq = case
    smoother = ProbabilitySmoother(len(seq[0][1]), params.time_constant_s)
    tracker = GenreTracker(params)
    for t, v in seq:
        smoothed = smoother.update(np.array(v, dtype=np.float32), t)
        tracker.update(smoothed, t)
        assert tracker.current is not None
        lead = float(smoothed.max() - smoothed[tracker.current])
        if params.stale_margin < 1:
            assert lead < params.stale_margin + 1e-6


def test_stale_rock_at_008_while_country_leads_at_058_switches_at_once() -> None:
    """The case seen on a rock clip: "rock" stayed current at 0.08 while country led at 0.58."""
    labels = ("country", "jazz", "rock")
    params = SmoothingParams(time_constant_s=0.0, switch_margin=0.1, min_dwell_s=3.0)
    assert params.stale_margin <= 0.5
    tr = GenreTracker(params)
    tr.update(vec(0.1, 0.1, 0.8), 0.0)
    assert labels[tr.current or 0] == "rock"
    change = tr.update(vec(0.58, 0.34, 0.08), 1.0)
    assert change is not None
    assert (labels[change.previous or 0], labels[change.current]) == ("rock", "country")
    assert change.confidence == pytest.approx(0.58)
    # the classic rule alone keeps "rock" for the 3 s of dwell
    old = GenreTracker(dataclasses.replace(params, stale_margin=1.0))
    old.update(vec(0.1, 0.1, 0.8), 0.0)
    for t in (1.0, 2.0, 3.0):
        assert old.update(vec(0.58, 0.34, 0.08), t) is None
    assert old.update(vec(0.58, 0.34, 0.08), 4.0) is not None


def test_a_lead_just_below_the_stale_margin_waits_for_the_dwell() -> None:
    tr = GenreTracker(SmoothingParams(0.0, switch_margin=0.1, min_dwell_s=2.0, stale_margin=0.3))
    tr.update(vec(0.6, 0.4), 0.0)
    assert tr.update(vec(0.36, 0.64), 1.0) is None  # lead 0.28
    assert tr.update(vec(0.36, 0.64), 2.0) is None
    assert tr.update(vec(0.36, 0.64), 3.0) is not None  # after 2 s of dwell
    with pytest.raises(ValueError, match="stale_margin"):
        SmoothingParams(stale_margin=1.5)
