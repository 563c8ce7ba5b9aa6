"""The batched :class:`~stream_server.core.smoothing.SmoothingTable` equals one stream at a time.

Many streams with their own clocks go through one table in batches of random make-up (a stream
at most once per batch, some streams idle in a batch, gaps that reset the smoothing, streams that
end and give their slot to new ones). Every window's smoothed vector, current genre, previous
genre and change flag must equal :class:`~tests.helpers.smoothing_reference.ReferenceStream`,
the rule written one window at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_server.core.smoothing import NO_LABEL, SmoothingParams, SmoothingTable
from tests.helpers.smoothing_reference import ReferenceStream

PARAMS = [
    SmoothingParams(),
    SmoothingParams(time_constant_s=0.0, switch_margin=0.0, min_dwell_s=0.0, stale_margin=1.0),
    SmoothingParams(time_constant_s=0.5, switch_margin=0.05, min_dwell_s=2.0, stale_margin=0.3),
    SmoothingParams(time_constant_s=4.0, switch_margin=0.1, min_dwell_s=3.0, stale_margin=1.0),
]


def _probs(rng: np.random.Generator, labels: int, leader: int) -> np.ndarray:
    """A noisy vector that favours ``leader`` (so the genre changes now and then)."""
    x = rng.dirichlet(np.full(labels, 0.6))
    x[leader] += rng.uniform(0.0, 0.8)
    if rng.random() < 0.05:
        x[rng.integers(labels)] = 0.0  # exact zeros happen in real outputs
    return (x / x.sum()).astype(np.float32)


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batches_equal_one_stream_at_a_time(params: SmoothingParams, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = int(rng.integers(2, 12))
    table = SmoothingTable(labels, params, capacity=2)  # grows while the test runs
    live: dict[int, tuple[ReferenceStream, list[float], list[int]]] = {}
    changes = 0
    for _ in range(400):
        while len(live) < 40 and rng.random() < 0.5:  # streams start
            live[table.acquire()] = (ReferenceStream(params), [float(rng.uniform(0, 50))], [0])
        if live and rng.random() < 0.05:  # one ends, its slot goes back
            slot = int(rng.choice(list(live)))
            table.release(slot)
            del live[slot]
        batch = [s for s in live if rng.random() < 0.6]
        rng.shuffle(batch)
        times, rows = [], []
        for slot in batch:
            ref, clock, leader = live[slot]
            if rng.random() < 0.02:  # a gap: smoothing starts afresh, the genre stays
                table.reset_smoothing(slot)
                ref.reset_smoothing()
                clock[0] += float(rng.uniform(5, 60))
            clock[0] += float(rng.choice([0.0, 0.25, 1.0, 1.0, 1.0, 3.0]))
            if rng.random() < 0.04:
                leader[0] = int(rng.integers(labels))
            times.append(clock[0])
            rows.append(_probs(rng, labels, leader[0]))
        if not batch:
            continue
        step = table.update(batch, np.stack(rows), times)
        for i, slot in enumerate(batch):
            smoothed, current, previous, changed = live[slot][0].step(rows[i], times[i])
            np.testing.assert_array_equal(step.smoothed[i], smoothed)
            assert int(step.current[i]) == current
            assert int(step.previous[i]) == (NO_LABEL if previous is None else previous)
            assert bool(step.changed[i]) == changed
            assert step.confidence[i] == pytest.approx(float(smoothed[current]), abs=0)
            assert table.current(slot) == current
            changes += int(changed and previous is not None)
    assert table.capacity >= 32
    assert changes > 20  # the rule switched genres, not only set the first ones


def test_a_bad_row_refuses_the_whole_batch_and_changes_nothing() -> None:
    table = SmoothingTable(3, SmoothingParams(), capacity=4)
    a, b = table.acquire(), table.acquire()
    table.update([a, b], [[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], [1.0, 1.0])
    bad = np.array([[0.2, 0.7, 0.1], [np.nan, 0.5, 0.5]])
    assert table.problems([a, b], bad, [2.0, 2.0]) == [None, "probs contains non-finite values"]
    with pytest.raises(ValueError, match="non-finite"):
        table.update([a, b], bad, [2.0, 2.0])
    with pytest.raises(ValueError, match="backwards"):
        table.update([a, b], [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]], [2.0, 0.5])
    with pytest.raises(ValueError, match="at most once"):
        table.update([a, a], [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]], [2.0, 3.0])
    # nothing moved: the next good window blends with the state of t = 1
    step = table.update([a], [[0.0, 1.0, 0.0]], [1.0])
    np.testing.assert_allclose(step.smoothed[0], [0.6, 0.3, 0.1], rtol=1e-6)
    assert table.problems([a, b], [[0.0, 0.0, 0.0], [-0.1, 0.6, 0.5]], [2.0, 2.0]) == [
        "probs must not be all zero",
        "probs contains negative values",
    ]
    assert table.problems([a, b], [[0.2, 0.7, 0.1]] * 2, [0.5, np.inf]) == [
        "stream_time_s went backwards: 0.5 s after 1.0 s",
        "stream_time_s must be finite, got inf",
    ]


def test_slots_are_reused_fresh_and_release_is_checked() -> None:
    table = SmoothingTable(2, SmoothingParams(time_constant_s=0.0), capacity=1)
    s = table.acquire()
    table.update([s], [[0.9, 0.1]], [5.0])
    assert table.current(s) == 0
    table.release(s)
    with pytest.raises(ValueError, match="not taken"):
        table.release(s)
    again = table.acquire()
    assert again == s
    assert table.current(again) is None
    step = table.update([again], [[0.2, 0.8]], [0.0])  # earlier than the old stream: fine
    assert bool(step.changed[0]) and int(step.previous[0]) == NO_LABEL
    other = table.acquire()  # grows
    assert table.capacity == 2 and table.in_use == 2 and other != again


def test_a_vanishing_time_constant_weighs_the_new_window_fully_without_overflow() -> None:
    table = SmoothingTable(4, SmoothingParams(time_constant_s=2.225073858507203e-309))
    np.testing.assert_array_equal(table.alpha([1.0, 0.5]), [1.0, 1.0])  # warnings are errors
