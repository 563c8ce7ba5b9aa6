"""Temporal smoothing of genre probabilities and a hysteresis rule for the current genre.

Both are driven by *stream time*: seconds of audio since the start of a stream, as carried by
each classifier update (not wall-clock time). Probability vectors have ``C`` entries, one per
genre label; label indices refer to positions in them.

:class:`SmoothingTable` keeps both for many streams at once, one row (a *slot*) per stream in
arrays shaped ``(slots, C)`` and ``(slots,)``: one call smooths and tracks a whole batch of
windows. The rule, per stream:

* **smoothing**: each update blends the new vector into the running state with
  ``alpha = 1 - exp(-dt / time_constant_s)`` (``dt``: seconds of stream time since that
  stream's previous update; ``time_constant_s == 0``: ``alpha = 1``), then renormalises to sum
  to 1. The first update (and the first after :meth:`SmoothingTable.reset_smoothing`) is taken
  as is;
* **hysteresis**: the current genre changes when a challenger -- the argmax of the smoothed
  vector -- beats the current genre's smoothed probability by at least ``switch_margin``,
  continuously, for at least ``min_dwell_s`` seconds of stream time (from the first update at
  which that challenger was ahead; dropping below the margin resets the clock, a different
  challenger restarts it), or by at least ``stale_margin`` (when below 1) at once, so the current
  genre is never stale. The first update sets the current genre (a change with no previous).

:class:`ProbabilitySmoother` and :class:`GenreTracker` are one stream's view of the two halves,
for callers with a single stream. The tuning, :class:`~stream_server.config.SmoothingParams`, is
the ``[smoothing]`` table's (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream_server.config import SmoothingParams

__all__ = [
    "GenreChange",
    "GenreTracker",
    "ProbabilitySmoother",
    "SmoothingParams",
    "SmoothingTable",
    "TrackStep",
]

#: Slack (in probability units) allowed when comparing a lead against a margin, so a lead that
#: equals the margin up to float32 rounding still counts as reaching it.
_MARGIN_TOLERANCE = 1e-6

#: "None" in the integer label arrays (no current genre, no challenger).
NO_LABEL = -1

Slots = npt.NDArray[np.intp]


def _check_non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _vectors(values: npt.ArrayLike, num_labels: int, name: str) -> npt.NDArray[np.float64]:
    """``(B, C)`` as float64, or ValueError naming the first bad row."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != num_labels:
        raise ValueError(f"{name} must have shape (batch, {num_labels}), got {arr.shape}")
    reasons = _row_problems(arr, name)
    for reason in reasons:
        if reason is not None:
            raise ValueError(reason)
    return arr


def _row_problems(arr: npt.NDArray[np.float64], name: str) -> list[str | None]:
    """For each row of ``(B, C)`` vectors: why it is not a probability vector, or ``None``."""
    ok = np.isfinite(arr)
    finite: npt.NDArray[np.bool_] = np.all(ok, axis=1)
    negative: npt.NDArray[np.bool_] = np.any(np.where(ok, arr, 0.0) < 0, axis=1)
    zero: npt.NDArray[np.bool_] = np.where(ok, arr, 1.0).sum(axis=1) <= 0
    out: list[str | None] = []
    for i in range(arr.shape[0]):
        if not finite[i]:
            out.append(f"{name} contains non-finite values")
        elif negative[i]:
            out.append(f"{name} contains negative values")
        elif zero[i]:
            out.append(f"{name} must not be all zero")
        else:
            out.append(None)
    return out


def _times(
    times: npt.ArrayLike, batch: int, last: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``(B,)`` stream times, checked finite and not before ``last`` (``(B,)``, NaN: none)."""
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.shape != (batch,):
        raise ValueError(f"expected {batch} stream times, got {t.shape}")
    bad = ~np.isfinite(t)
    if bad.any():
        raise ValueError(f"stream_time_s must be finite, got {t[bad][0]!r}")
    back = t < last  # NaN (no previous update) compares False
    if back.any():
        i = int(np.flatnonzero(back)[0])
        raise ValueError(
            f"stream_time_s went backwards: {float(t[i])!r} s after {float(last[i])!r} s"
        )
    return t


@dataclass(frozen=True)
class TrackStep:
    """What one batch did to the current genres, one row per window (``B`` rows).

    Attributes:
        smoothed: ``(B, C)`` float32, the smoothed vectors the tracker judged (sum to 1 when they
            came from :meth:`SmoothingTable.update`).
        current: ``(B,)`` label index of each stream's current genre after the window.
        previous: ``(B,)`` its current genre before, :data:`NO_LABEL` at its first window.
        changed: ``(B,)`` bool, whether the window set or switched the current genre.
        confidence: ``(B,)`` float64, the smoothed probability of ``current``.
    """

    smoothed: npt.NDArray[np.float32]
    current: npt.NDArray[np.intp]
    previous: npt.NDArray[np.intp]
    changed: npt.NDArray[np.bool_]
    confidence: npt.NDArray[np.float64]


class SmoothingTable:
    """Smoothing and hysteresis of many streams: one slot per stream, arrays over slots.

    A stream takes a slot with :meth:`acquire` and gives it back with :meth:`release`.
    :meth:`update` takes a batch -- slot indices ``(B,)`` (each at most once), probabilities
    ``(B, C)``, stream times ``(B,)`` in seconds -- and smooths and tracks all of it with array
    operations; :meth:`smooth` and :meth:`track` are its two halves. A batch with a bad row
    (:meth:`problems` names it) is refused whole, before any state changes. Not thread-safe.
    """

    def __init__(self, num_labels: int, params: SmoothingParams, capacity: int = 8) -> None:
        """A table for ``(num_labels,)`` vectors with room for ``capacity`` streams (it grows).

        Raises:
            ValueError: ``num_labels`` < 1 or ``capacity`` < 1.
        """
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        _check_non_negative("time_constant_s", params.time_constant_s)
        self.num_labels = num_labels
        self.params = params
        self._state = np.zeros((0, num_labels))  # (slots, C) smoothed state
        self._smooth_t = np.zeros(0)  # (slots,) time of the last smoothing, NaN: none
        self._track_t = np.zeros(0)  # (slots,) time of the last tracking, NaN: none
        self._current = np.zeros(0, dtype=np.intp)  # (slots,) NO_LABEL: none yet
        self._confidence = np.zeros(0)  # (slots,)
        self._challenger = np.zeros(0, dtype=np.intp)  # (slots,) NO_LABEL: no dwell clock
        self._since = np.zeros(0)  # (slots,) when the challenger's dwell clock started
        self._free: list[int] = []
        self._grow(capacity)

    # -- slots ------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Slots allocated (taken or free)."""
        return int(self._current.shape[0])

    @property
    def in_use(self) -> int:
        """Slots taken."""
        return self.capacity - len(self._free)

    def acquire(self) -> int:
        """A fresh slot: no smoothing state, no current genre."""
        if not self._free:
            self._grow(self.capacity * 2)
        slot = self._free.pop()
        self.reset_smoothing(slot)
        self.reset_tracking(slot)
        return slot

    def release(self, slot: int) -> None:
        """Give ``slot`` back (its stream ended)."""
        if slot in self._free or not 0 <= slot < self.capacity:
            raise ValueError(f"slot {slot} is not taken")
        self._free.append(slot)

    def reset_smoothing(self, slot: int) -> None:
        """Forget ``slot``'s smoothing: its next vector is taken as is (after a gap)."""
        self._state[slot] = 0.0
        self._smooth_t[slot] = np.nan

    def reset_tracking(self, slot: int) -> None:
        """Forget ``slot``'s current genre, challenger and last stream time."""
        self._track_t[slot] = np.nan
        self._current[slot] = NO_LABEL
        self._confidence[slot] = 0.0
        self._challenger[slot] = NO_LABEL
        self._since[slot] = 0.0

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        extra = capacity - old
        self._state = np.vstack([self._state, np.zeros((extra, self.num_labels))])
        self._smooth_t = np.concatenate([self._smooth_t, np.full(extra, np.nan)])
        self._track_t = np.concatenate([self._track_t, np.full(extra, np.nan)])
        self._current = np.concatenate([self._current, np.full(extra, NO_LABEL, np.intp)])
        self._confidence = np.concatenate([self._confidence, np.zeros(extra)])
        self._challenger = np.concatenate([self._challenger, np.full(extra, NO_LABEL, np.intp)])
        self._since = np.concatenate([self._since, np.zeros(extra)])
        self._free.extend(range(capacity - 1, old - 1, -1))

    # -- one slot's view --------------------------------------------------------------------

    def current(self, slot: int) -> int | None:
        """``slot``'s current genre (label index), ``None`` before its first tracked window."""
        value = int(self._current[slot])
        return None if value == NO_LABEL else value

    def confidence(self, slot: int) -> float:
        """Smoothed probability of ``slot``'s current genre at its last window (0 before)."""
        return float(self._confidence[slot])

    def challenger(self, slot: int) -> int | None:
        """The label whose dwell clock runs for ``slot``, if any."""
        value = int(self._challenger[slot])
        return None if value == NO_LABEL else value

    # -- batches ----------------------------------------------------------------------------

    def alpha(self, dt_s: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Weights ``1 - exp(-dt_s / time_constant_s)`` for steps of ``dt_s`` seconds (1 when
        smoothing is off)."""
        dt = np.asarray(dt_s, dtype=np.float64)
        if self.params.time_constant_s == 0:
            return np.ones_like(dt)
        # A time constant so small that the step overflows weighs the new window fully (1).
        with np.errstate(over="ignore"):
            out: npt.NDArray[np.float64] = -np.expm1(-dt / self.params.time_constant_s)
        return out

    def problems(
        self, slots: Sequence[int] | npt.ArrayLike, probs: npt.ArrayLike, times: npt.ArrayLike
    ) -> list[str | None]:
        """For each window of a batch (slots ``(B,)``, probabilities ``(B, C)``, stream times
        ``(B,)``): why :meth:`update` would refuse it, or ``None``. Shapes must match."""
        idx = np.asarray(slots, dtype=np.intp).reshape(-1)
        arr = np.asarray(probs, dtype=np.float64)
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        if arr.shape != (idx.size, self.num_labels) or t.shape != idx.shape:
            raise ValueError(
                f"expected ({idx.size}, {self.num_labels}) probabilities and {idx.size} times, "
                f"got {arr.shape} and {t.shape}"
            )
        out = _row_problems(arr, "probs")
        last = np.fmax(self._smooth_t[idx], self._track_t[idx])
        for i, reason in enumerate(out):
            if reason is not None:
                continue
            if not math.isfinite(t[i]):
                out[i] = f"stream_time_s must be finite, got {float(t[i])!r}"
            elif t[i] < last[i]:
                out[i] = (
                    f"stream_time_s went backwards: {float(t[i])!r} s after {float(last[i])!r} s"
                )
        return out

    def _slots(self, slots: Sequence[int] | npt.ArrayLike) -> Slots:
        idx = np.asarray(slots, dtype=np.intp).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.capacity):
            raise ValueError(f"slots must be in [0, {self.capacity}), got {idx.tolist()}")
        if np.unique(idx).size != idx.size:
            raise ValueError("each slot may appear at most once in a batch")
        return idx

    def _batch(
        self, slots: Sequence[int] | npt.ArrayLike, values: npt.ArrayLike, name: str
    ) -> tuple[Slots, npt.NDArray[np.float64]]:
        """Checked slot indices ``(B,)`` and vectors ``(B, C)``."""
        idx = self._slots(slots)
        arr = _vectors(values, self.num_labels, name)
        if arr.shape[0] != idx.size:
            raise ValueError(f"expected {idx.size} {name} vectors, got {arr.shape[0]}")
        return idx, arr

    def smooth(
        self, slots: Sequence[int] | npt.ArrayLike, probs: npt.ArrayLike, times: npt.ArrayLike
    ) -> npt.NDArray[np.float32]:
        """Blend one vector into each slot's state; ``(B, C)`` float32 smoothed vectors.

        Raises:
            ValueError: a bad slot, shape, vector or time (nothing changes then).
        """
        idx, arr = self._batch(slots, probs, "probs")
        last = self._smooth_t[idx]
        t = _times(times, idx.size, last)
        fresh = np.isnan(last)
        a = self.alpha(np.where(fresh, 0.0, t - last))[:, None]
        state = np.where(fresh[:, None], arr, (1.0 - a) * self._state[idx] + a * arr)
        state /= state.sum(axis=1, keepdims=True)
        self._state[idx] = state
        self._smooth_t[idx] = t
        return state.astype(np.float32)

    def track(
        self, slots: Sequence[int] | npt.ArrayLike, smoothed: npt.ArrayLike, times: npt.ArrayLike
    ) -> TrackStep:
        """Apply the hysteresis rule to one smoothed vector per slot.

        Raises:
            ValueError: a bad slot, shape, vector or time (nothing changes then).
        """
        idx, arr = self._batch(slots, smoothed, "smoothed")
        t = _times(times, idx.size, self._track_t[idx])
        rows = np.arange(idx.size)
        p = self.params
        leader = np.argmax(arr, axis=1)
        current = self._current[idx]
        challenger = self._challenger[idx]
        since = self._since[idx]
        first = current == NO_LABEL
        held = np.where(first, leader, current)
        lead = arr[rows, leader] - arr[rows, held]
        rival = (leader != held) & (lead > 0)
        ahead = rival & (lead >= p.switch_margin - _MARGIN_TOLERANCE)
        stale = rival & (p.stale_margin < 1) & (lead >= p.stale_margin - _MARGIN_TOLERANCE)
        running = ~first & (ahead | stale)
        restart = running & (leader != challenger)
        since = np.where(restart, t, since)
        switch = running & (stale | (t - since >= p.min_dwell_s))
        new_current = np.where(first | switch, leader, current)
        challenger = np.where(running & ~switch, leader, NO_LABEL)
        confidence = arr[rows, new_current]
        self._track_t[idx] = t
        self._current[idx] = new_current
        self._challenger[idx] = challenger
        self._since[idx] = since
        self._confidence[idx] = confidence
        return TrackStep(
            smoothed=arr.astype(np.float32),
            current=new_current,
            previous=current,
            changed=first | switch,
            confidence=confidence,
        )

    def update(
        self, slots: Sequence[int] | npt.ArrayLike, probs: npt.ArrayLike, times: npt.ArrayLike
    ) -> TrackStep:
        """:meth:`smooth`, then :meth:`track` on its output: one window per slot.

        Raises:
            ValueError: a bad slot, shape, vector or time (nothing changes then).
        """
        idx = self._slots(slots)
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        _times(t, idx.size, self._track_t[idx])  # checked before the smoothing moves
        smoothed = self.smooth(idx, probs, t)
        step = self.track(idx, smoothed, t)
        return TrackStep(smoothed, step.current, step.previous, step.changed, step.confidence)


@dataclass(frozen=True)
class GenreChange:
    """The current genre changed.

    Attributes:
        stream_time_s: Stream time of the update that made the change, in seconds.
        previous: Label index of the previous genre, ``None`` for the first genre.
        current: Label index of the new current genre.
        confidence: Smoothed probability of ``current`` at that update (``0..1``).
    """

    stream_time_s: float
    previous: int | None
    current: int
    confidence: float


def _one(values: npt.ArrayLike, num_labels: int | None, name: str) -> npt.NDArray[np.float64]:
    """A single ``(C,)`` vector as one row ``(1, C)``."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {arr.shape}")
    if num_labels is not None and arr.shape[0] != num_labels:
        raise ValueError(f"{name} must have shape ({num_labels},), got {arr.shape}")
    return arr[None, :]


class ProbabilitySmoother:
    """One stream's exponential smoothing (a one-slot :class:`SmoothingTable`)."""

    def __init__(self, num_labels: int, time_constant_s: float) -> None:
        """Create a smoother for vectors of shape ``(num_labels,)``.

        Raises:
            ValueError: ``num_labels`` < 1, or ``time_constant_s`` negative or not finite.
        """
        _check_non_negative("time_constant_s", time_constant_s)
        params = SmoothingParams(time_constant_s=float(time_constant_s))
        self._table = SmoothingTable(num_labels, params, capacity=1)
        self._slot = self._table.acquire()

    @property
    def num_labels(self) -> int:
        """Number of genre labels ``C``."""
        return self._table.num_labels

    @property
    def time_constant_s(self) -> float:
        """Smoothing time constant, in seconds of stream time."""
        return self._table.params.time_constant_s

    def alpha(self, dt_s: float) -> float:
        """Weight given to a new vector arriving ``dt_s`` seconds after the last."""
        return float(self._table.alpha(dt_s))

    def update(self, probs: npt.ArrayLike, stream_time_s: float) -> npt.NDArray[np.float32]:
        """Blend in one ``(C,)`` vector at ``stream_time_s``; a new float32 ``(C,)`` summing
        to 1.

        Raises:
            ValueError: wrong shape, invalid values, or stream time going backwards.
        """
        row = _one(probs, self.num_labels, "probs")
        out: npt.NDArray[np.float32] = self._table.smooth([self._slot], row, [stream_time_s])[0]
        return out

    def reset(self) -> None:
        """Forget the history; the next update is taken as is (used after a gap in the stream)."""
        self._table.reset_smoothing(self._slot)


class GenreTracker:
    """One stream's hysteresis rule (a one-slot :class:`SmoothingTable`): which genre is current.

    The number of labels is set by the first update and stays until :meth:`reset`.
    """

    def __init__(self, params: SmoothingParams) -> None:
        """Create a tracker with no current genre; ``params`` supplies margin and dwell."""
        self._params = params
        self._table: SmoothingTable | None = None

    @property
    def params(self) -> SmoothingParams:
        """The tuning this tracker was created with."""
        return self._params

    @property
    def current(self) -> int | None:
        """Label index of the current genre, ``None`` before the first update."""
        return None if self._table is None else self._table.current(0)

    @property
    def confidence(self) -> float:
        """Smoothed probability of the current genre at the last update (``0.0`` before any)."""
        return 0.0 if self._table is None else self._table.confidence(0)

    @property
    def challenger(self) -> int | None:
        """Label index of the challenger whose dwell clock is running, if any."""
        return None if self._table is None else self._table.challenger(0)

    def update(self, smoothed: npt.ArrayLike, stream_time_s: float) -> GenreChange | None:
        """Feed one smoothed ``(C,)`` vector; return the change it caused, if any.

        Raises:
            ValueError: wrong shape, invalid values, or stream time going backwards.
        """
        labels = None if self._table is None else self._table.num_labels
        row = _one(smoothed, labels, "smoothed")
        table = self._table or SmoothingTable(row.shape[1], self._params, capacity=1)
        if self._table is None:
            table.acquire()
        step = table.track([0], row, [stream_time_s])
        self._table = table
        if not step.changed[0]:
            return None
        previous = int(step.previous[0])
        return GenreChange(
            float(stream_time_s),
            None if previous == NO_LABEL else previous,
            int(step.current[0]),
            float(step.confidence[0]),
        )

    def reset(self) -> None:
        """Forget the current genre, any challenger and the last stream time."""
        self._table = None
