"""A window due for inference: what a session hands to the engine (pure data, numpy only)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["WindowJob", "stack_windows"]


@dataclass(eq=False)
class WindowJob:
    """One window of one stream, due for inference.

    ``window`` is ``(samples,)`` float32 at the model's rate; ``end_sample`` the absolute index one
    past its last sample; ``arrival`` the ``time.monotonic()`` at which that last sample arrived;
    ``since`` the absolute index from which the stream's audio runs without a gap up to
    ``end_sample`` (a model that keeps state per stream starts afresh when it changes).

    A ``warm`` job comes before a stream's first full window (after its start or a gap): its
    ``window`` is the stream's audio so far, from ``since``, shorter than a window. A model that
    keeps state per stream takes it in ahead of time, so the first window costs no more than the
    others; it is not scored, and nobody waits for it.
    """

    stream_id: str
    window: np.ndarray
    end_sample: int
    arrival: float
    enqueued: float = field(default_factory=time.monotonic)
    since: int = 0
    warm: bool = False


def stack_windows(jobs: Sequence[WindowJob]) -> np.ndarray:
    """The jobs' windows as one ``(len(jobs), samples)`` float32 batch (windows of one length)."""
    return np.stack([job.window for job in jobs]).astype(np.float32, copy=False)
