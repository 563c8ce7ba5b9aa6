"""Temporal smoothing of genre probabilities and a hysteresis rule for the current genre.

Both classes are driven by *stream time*: seconds of audio since the start of the stream, as
carried by each classifier update (not wall-clock time). Probability vectors have shape ``(C,)``
where ``C`` is the number of genre labels; label indices refer to positions in that vector.

:class:`ProbabilitySmoother` turns the noisy per-hop classifier output into a smoothed vector;
:class:`GenreTracker` decides, from the smoothed vector, which single genre is current, switching
only when a challenger stays clearly ahead for long enough, so the live timeline does not flicker,
and at once when a challenger leads by far, so the current genre is never stale. Their tuning,
:class:`~stream_server.config.SmoothingParams`, is the ``[smoothing]`` table's (re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream_server.config import SmoothingParams

__all__ = [
    "GenreChange",
    "GenreTracker",
    "ProbabilitySmoother",
    "SmoothingParams",
]

#: Slack (in probability units) allowed when comparing a lead against ``switch_margin``, so a
#: lead that equals the margin up to float32 rounding still counts as reaching it.
_MARGIN_TOLERANCE = 1e-6


def _check_non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_time(stream_time_s: float, previous_s: float | None) -> None:
    if not math.isfinite(stream_time_s):
        raise ValueError(f"stream_time_s must be finite, got {stream_time_s!r}")
    if previous_s is not None and stream_time_s < previous_s:
        raise ValueError(
            f"stream_time_s went backwards: {stream_time_s!r} s after {previous_s!r} s"
        )


def _as_probability_vector(
    probs: npt.ArrayLike, num_labels: int | None, name: str
) -> npt.NDArray[np.float64]:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {arr.shape}")
    if num_labels is not None and arr.shape[0] != num_labels:
        raise ValueError(f"{name} must have shape ({num_labels},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    if np.any(arr < 0):
        raise ValueError(f"{name} contains negative values")
    return arr


class ProbabilitySmoother:
    """Exponential smoothing of a probability vector over stream time.

    Each update blends the new vector into the running state with
    ``alpha = 1 - exp(-dt / time_constant_s)``, where ``dt`` is the step in seconds of stream
    time since the previous update: ``state = (1 - alpha) * state + alpha * probs``. The first
    update (and the first after :meth:`reset`) is taken as is. ``time_constant_s == 0`` disables
    smoothing (``alpha = 1``). The output is renormalised to sum to 1.
    """

    def __init__(self, num_labels: int, time_constant_s: float) -> None:
        """Create a smoother for vectors of shape ``(num_labels,)``.

        Args:
            num_labels: Number of genre labels ``C`` (> 0).
            time_constant_s: Smoothing time constant in seconds of stream time (>= 0).

        Raises:
            ValueError: ``num_labels`` < 1, or ``time_constant_s`` negative or not finite.
        """
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels!r}")
        _check_non_negative("time_constant_s", time_constant_s)
        self._num_labels = num_labels
        self._time_constant_s = float(time_constant_s)
        self._state: npt.NDArray[np.float64] | None = None
        self._last_time_s: float | None = None

    @property
    def num_labels(self) -> int:
        """Number of genre labels ``C``."""
        return self._num_labels

    @property
    def time_constant_s(self) -> float:
        """Smoothing time constant, in seconds of stream time."""
        return self._time_constant_s

    def alpha(self, dt_s: float) -> float:
        """Weight given to a new vector arriving ``dt_s`` seconds of stream time after the last.

        Returns ``1 - exp(-dt_s / time_constant_s)``, or ``1.0`` when smoothing is disabled.
        """
        if self._time_constant_s == 0:
            return 1.0
        return -math.expm1(-dt_s / self._time_constant_s)

    def update(self, probs: npt.ArrayLike, stream_time_s: float) -> npt.NDArray[np.float32]:
        """Blend in one classifier output and return the smoothed vector.

        Args:
            probs: Probabilities, shape ``(C,)``, finite, non-negative, not all zero (float32
                normally; any real dtype is accepted). Not modified.
            stream_time_s: Stream time of this output in seconds; must not be earlier than the
                previous update's.

        Returns:
            A new float32 array of shape ``(C,)`` summing to 1.

        Raises:
            ValueError: wrong shape, invalid values, or stream time going backwards.
        """
        arr = _as_probability_vector(probs, self._num_labels, "probs")
        if float(arr.sum()) <= 0:
            raise ValueError("probs must not be all zero")
        _check_time(stream_time_s, self._last_time_s)
        if self._state is None or self._last_time_s is None:
            state = arr.copy()
        else:
            a = self.alpha(stream_time_s - self._last_time_s)
            state = (1.0 - a) * self._state + a * arr
        state /= state.sum()
        self._state = state
        self._last_time_s = float(stream_time_s)
        return state.astype(np.float32)

    def reset(self) -> None:
        """Forget the history; the next update is taken as is (used after a gap in the stream)."""
        self._state = None
        self._last_time_s = None


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


class GenreTracker:
    """Hysteresis rule deciding the current genre from smoothed probability vectors.

    The current genre (a label index) changes when a challenger -- the argmax of the smoothed
    vector -- beats the current genre's smoothed probability

    * by at least ``switch_margin``, continuously, for at least ``min_dwell_s`` seconds of stream
      time (measured from the first update at which that challenger was ahead); a challenger that
      drops below the margin resets the dwell clock, a different challenger restarts it; or
    * by at least ``stale_margin`` (when below 1), at once: after any update the current genre's
      smoothed probability is less than ``stale_margin`` below the leader's (no stale genre).

    The first update sets the current genre immediately (a change with ``previous=None``).
    Without the ``stale_margin`` rule, two changes after the first are never closer than
    ``min_dwell_s`` apart in stream time.
    """

    def __init__(self, params: SmoothingParams) -> None:
        """Create a tracker with no current genre; ``params`` supplies margin and dwell."""
        self._params = params
        self._num_labels: int | None = None
        self._current: int | None = None
        self._confidence = 0.0
        self._last_time_s: float | None = None
        self._challenger: int | None = None
        self._challenger_since_s = 0.0

    @property
    def params(self) -> SmoothingParams:
        """The tuning this tracker was created with."""
        return self._params

    @property
    def current(self) -> int | None:
        """Label index of the current genre, ``None`` before the first update."""
        return self._current

    @property
    def confidence(self) -> float:
        """Smoothed probability of the current genre at the last update (``0.0`` before any)."""
        return self._confidence

    @property
    def challenger(self) -> int | None:
        """Label index of the challenger whose dwell clock is running, if any."""
        return self._challenger

    def update(self, smoothed: npt.ArrayLike, stream_time_s: float) -> GenreChange | None:
        """Feed one smoothed vector; return the change it caused, if any.

        Args:
            smoothed: Smoothed probabilities, shape ``(C,)``; ``C`` must stay the same across
                updates until :meth:`reset`.
            stream_time_s: Stream time of this vector in seconds; must not be earlier than the
                previous update's.

        Returns:
            A :class:`GenreChange` when the current genre was set or switched, else ``None``.

        Raises:
            ValueError: wrong shape, invalid values, or stream time going backwards.
        """
        arr = _as_probability_vector(smoothed, self._num_labels, "smoothed")
        _check_time(stream_time_s, self._last_time_s)
        self._last_time_s = float(stream_time_s)
        leader = int(np.argmax(arr))

        if self._current is None:
            self._num_labels = int(arr.shape[0])
            self._current = leader
            self._confidence = float(arr[leader])
            return GenreChange(float(stream_time_s), None, leader, self._confidence)

        lead = float(arr[leader] - arr[self._current])
        params = self._params
        ahead = (
            leader != self._current
            and lead > 0
            and lead >= params.switch_margin - _MARGIN_TOLERANCE
        )
        stale = (
            leader != self._current
            and lead > 0
            and params.stale_margin < 1
            and lead >= params.stale_margin - _MARGIN_TOLERANCE
        )
        change: GenreChange | None = None
        if not (ahead or stale):
            self._challenger = None
        else:
            if leader != self._challenger:
                self._challenger = leader
                self._challenger_since_s = float(stream_time_s)
            if stale or stream_time_s - self._challenger_since_s >= params.min_dwell_s:
                change = GenreChange(
                    float(stream_time_s), self._current, leader, float(arr[leader])
                )
                self._current = leader
                self._challenger = None
        self._confidence = float(arr[self._current])
        return change

    def reset(self) -> None:
        """Forget the current genre, any challenger and the last stream time."""
        self._num_labels = None
        self._current = None
        self._confidence = 0.0
        self._last_time_s = None
        self._challenger = None
        self._challenger_since_s = 0.0
