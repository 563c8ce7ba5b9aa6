"""A window due for inference and what comes back for it: what a session hands to an engine and
the scores it gets (pure data, numpy only), their bytes where they cross to another process (a
window as 16-bit PCM, scores as float32), and the interface of an engine as the server uses it
(:class:`WindowEngine`: the engine thread of :mod:`stream_server.inference.engine`, an ingest
worker's link to the engine process, or a cluster node's inference workers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ring_buffer.buffer import PCM16_SCALE, to_pcm16

__all__ = [
    "ErrorCallback",
    "ResultsCallback",
    "WindowEngine",
    "WindowJob",
    "WindowResult",
    "WindowScores",
    "check_windows",
    "pcm16_bytes",
    "pcm16_window",
    "scores_bytes",
    "scores_from_bytes",
    "stack_windows",
]


@dataclass(eq=False)
class WindowJob:
    """One window of one stream, due for inference.

    ``window`` is ``(samples,)`` float32 at the model's rate; ``end_sample`` the absolute index one
    past its last sample; ``arrival`` the ``time.monotonic()`` at which that last sample arrived;
    ``since`` the absolute index from which the stream's audio runs without a gap up to
    ``end_sample`` (a model that keeps state per stream starts afresh when it changes).

    A ``warm`` job brings a stream's audio ahead of its next window, for a model that keeps
    state per stream: before the first full window (after its start or a gap) its ``window`` is
    the stream's audio so far, from ``since``; between windows, the audio since the previous
    window's end (:attr:`~stream_server.core.session.SessionParams.feed_samples`). Taken in ahead
    of time, it leaves a due window only its newest audio to compute, so the first window costs
    no more than the others and windows due at the same instant wait for less. It is not scored,
    nobody waits for it, and it never displaces a window: the engine drops a warm job that
    arrives while the stream's window is still pending (that window brings the same audio).
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


@dataclass(frozen=True)
class WindowScores:
    """What the runner computed for ``n`` windows.

    Attributes:
        probs: ``(n, labels)`` float32 genre probabilities (each row sums to 1).
        level_dbfs: ``(n,)`` float32 level of each window's newest ``level_samples``, in dBFS.
        speech: ``(n,)`` float32 speech probabilities ``0..1``; zeros without a speech detector.
    """

    probs: np.ndarray
    level_dbfs: np.ndarray
    speech: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, index: slice | list[int]) -> WindowScores:
        """The scores of a slice (or a list) of the windows."""
        return WindowScores(self.probs[index], self.level_dbfs[index], self.speech[index])

    @staticmethod
    def empty(labels: int) -> WindowScores:
        """Scores of no window, for ``labels`` labels."""
        none = np.empty(0, dtype=np.float32)
        return WindowScores(np.empty((0, labels), dtype=np.float32), none, none.copy())

    @staticmethod
    def concat(parts: Sequence[WindowScores]) -> WindowScores:
        """The parts' windows one after another (at least one part)."""
        return WindowScores(
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.level_dbfs for p in parts]),
            np.concatenate([p.speech for p in parts]),
        )

    @staticmethod
    def of_results(results: Sequence[WindowResult]) -> WindowScores:
        """The scores of ``results`` (at least one), in their order."""
        return WindowScores(
            np.stack([result.probs for result in results]),
            np.array([result.level_dbfs for result in results], dtype=np.float32),
            np.array([result.speech_prob for result in results], dtype=np.float32),
        )


@dataclass(frozen=True, eq=False)
class WindowResult:
    """What the engine computed for a job, with the batch it ran in.

    ``probs`` is ``(labels,)``; ``level_dbfs`` the level of the window's newest hop (dBFS) and
    ``speech_prob`` its speech probability (``0`` without a speech detector): the gate's inputs
    (:mod:`stream_server.core.gate`).
    """

    job: WindowJob
    probs: np.ndarray
    batch_size: int
    batch_seconds: float
    level_dbfs: float = 0.0
    speech_prob: float = 0.0


ResultsCallback = Callable[[Sequence[WindowResult]], None]
ErrorCallback = Callable[[Sequence[WindowJob], BaseException], None]


def check_windows(
    windows: np.ndarray, jobs: Sequence[WindowJob] | None, labels: int
) -> Future[WindowScores]:
    """The future of a one-shot run of ``windows`` ``(n, samples)`` with ``jobs`` (one per
    window, or ``None``), already done for no window.

    Raises:
        ValueError: ``windows`` is not 2-D, or ``jobs`` does not match it.
    """
    if windows.ndim != 2:
        raise ValueError(f"windows must be (n, samples), got shape {windows.shape}")
    if jobs is not None and len(jobs) != len(windows):
        raise ValueError(f"{len(jobs)} jobs for {len(windows)} windows")
    future: Future[WindowScores] = Future()
    if len(windows) == 0:
        future.set_result(WindowScores.empty(labels))
    return future


class WindowEngine(Protocol):
    """What the server needs of an engine: the engine thread
    (:class:`~stream_server.inference.engine.Engine`), or an ingest
    worker's link to the engine process (:class:`~stream_server.serve.engine_link.RemoteEngine`,
    whose ``submit`` and ``cancel`` report replaced windows later instead of returning them)."""

    max_batch: int

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def submit(self, job: WindowJob) -> WindowJob | None: ...

    def run_windows(
        self, windows: np.ndarray, jobs: Sequence[WindowJob] | None = None
    ) -> Future[WindowScores]: ...

    def cancel(self, stream_id: str) -> WindowJob | None: ...

    def release(self, stream_id: str) -> None: ...


def pcm16_bytes(window: np.ndarray) -> bytes:
    """``(samples,)`` float32 audio as little-endian int16 bytes, encoded as a 16-bit ring buffer
    stores it (:func:`ring_buffer.buffer.to_pcm16`): exact for audio such a buffer held."""
    return to_pcm16(window).astype("<i2", copy=False).tobytes()


def pcm16_window(payload: bytes) -> np.ndarray:
    """The inverse of :func:`pcm16_bytes`: ``(samples,)`` float32, as a 16-bit ring buffer reads
    its samples (exact).

    Raises:
        ValueError: an odd number of bytes.
    """
    if len(payload) % 2:
        raise ValueError(f"{len(payload)} bytes are not 16-bit samples")
    window = np.frombuffer(payload, dtype="<i2").astype(np.float32)
    window *= np.float32(1.0 / PCM16_SCALE)  # a power of two: exact
    return window


def scores_bytes(scores: WindowScores) -> bytes:
    """``n`` windows' scores as one payload: probs ``(n, labels)``, then levels and speech
    ``(n,)``, all little-endian float32."""
    return b"".join(
        np.ascontiguousarray(part, dtype="<f4").tobytes()
        for part in (scores.probs, scores.level_dbfs, scores.speech)
    )


def scores_from_bytes(payload: bytes, n: int, labels: int) -> WindowScores:
    """The inverse of :func:`scores_bytes`.

    Raises:
        ValueError: not ``n * (labels + 2)`` float32 values.
    """
    flat = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if flat.size != n * (labels + 2):
        raise ValueError(f"{flat.size} scores for {n} windows of {labels} labels")
    probs = flat[: n * labels].reshape(n, labels)
    return WindowScores(probs, flat[n * labels : n * (labels + 1)], flat[n * (labels + 1) :])
