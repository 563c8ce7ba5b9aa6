"""One stream's smoothing and hysteresis written as a plain loop: the reference the batched
:class:`~stream_server.core.smoothing.SmoothingTable` must equal.

It restates the documented rule (:mod:`stream_server.core.smoothing`) one window at a time in
float64, with no arrays over streams: exponential smoothing over stream time, renormalised; a
challenger that leads by ``switch_margin`` for ``min_dwell_s`` takes over, one that leads by
``stale_margin`` at once.
"""

from __future__ import annotations

import math

import numpy as np

from stream_server.core.smoothing import SmoothingParams

#: The rule's slack when a lead is compared with a margin (as in the table).
TOLERANCE = 1e-6


class ReferenceStream:
    """Smoothing and tracking of one stream, window by window."""

    def __init__(self, params: SmoothingParams) -> None:
        self.params = params
        self.state: np.ndarray | None = None
        self.smooth_time: float | None = None
        self.current: int | None = None
        self.challenger: int | None = None
        self.since = 0.0

    def reset_smoothing(self) -> None:
        self.state = None
        self.smooth_time = None

    def step(self, probs: np.ndarray, time_s: float) -> tuple[np.ndarray, int, int | None, bool]:
        """Feed ``(C,)`` probabilities at ``time_s``: ``(smoothed float32, current, previous,
        changed)``."""
        arr = np.asarray(probs, dtype=np.float64)
        tau = self.params.time_constant_s
        if self.state is None or self.smooth_time is None:
            state = arr.copy()
        else:
            alpha = 1.0 if tau == 0 else -math.expm1(-(time_s - self.smooth_time) / tau)
            state = (1.0 - alpha) * self.state + alpha * arr
        state /= state.sum()
        self.state, self.smooth_time = state, time_s
        smoothed = state.astype(np.float32)

        values = smoothed.astype(np.float64)
        leader = int(np.argmax(values))
        previous = self.current
        if self.current is None:
            self.current = leader
            return smoothed, leader, None, True
        lead = float(values[leader] - values[self.current])
        p = self.params
        rival = leader != self.current and lead > 0
        ahead = rival and lead >= p.switch_margin - TOLERANCE
        stale = rival and p.stale_margin < 1 and lead >= p.stale_margin - TOLERANCE
        changed = False
        if not (ahead or stale):
            self.challenger = None
        else:
            if leader != self.challenger:
                self.challenger, self.since = leader, time_s
            if stale or time_s - self.since >= p.min_dwell_s:
                self.current, self.challenger, changed = leader, None, True
        return smoothed, self.current, previous, changed
