"""One live stream as a state object with no I/O: PCM in, due windows out, scores in, messages out.

:meth:`StreamSession.feed` takes raw PCM bytes, normalises them to mono float32 at the model's
rate, writes them to the stream's :class:`~ring_buffer.RingBuffer` and returns the window that is
due, if any. Windows end every ``hop`` samples once a full ``window`` has arrived; when one feed
completes several windows only the newest is returned (latest wins) and the rest are counted as
skipped. :meth:`StreamSession.on_scores` takes the model's probabilities for a window (with its
level and speech probability, the gate's inputs) and returns the messages to publish
(``genre.update``, and ``genre.change`` when the label shown changes) plus the tail of the
timeline to store; the decisions are a :class:`~stream_server.core.labelling.Labeller`'s.
:func:`score_batch` does the same for a batch of windows of many sessions that share one
:class:`~stream_server.core.smoothing.SmoothingTable`, with one call to the table. Sample
positions are absolute indices at the model's rate.

:meth:`StreamSession.mark_gap` records that the source went away for a while (a pulled stream
reconnecting): the open timeline segment is closed, stream time jumps forward by the length of
the gap, and no window straddles it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ring_buffer import RingBuffer
from stream_server.config import SmoothingParams
from stream_server.core.audio import PcmDecoder, StreamingResampler
from stream_server.core.decoding import OfflineParams
from stream_server.core.gate import GateParams
from stream_server.core.labelling import LabelInput, Labeller, LabelParams, LabelStep, step_batch
from stream_server.core.smoothing import SmoothingTable
from stream_server.core.timeline import Segment
from stream_server.core.windows import WindowJob
from stream_server.messages import GenreChange, GenreUpdate, LabelProb, SampleFormat


@dataclass(frozen=True)
class SessionParams:
    """Windowing and labels for one stream. Rates in Hz, lengths in samples at ``model_rate``.

    ``labels`` are the displayed genres. ``label_map`` maps each model output index to its index
    in ``labels`` when several model labels are merged into one; empty means one to one.
    ``smoothing``, ``gate`` and ``backdate_max_s`` govern the live labels and the stored timeline
    (:mod:`stream_server.core.labelling`); ``offline`` how whole files are decoded
    (:mod:`stream_server.core.decoding`). ``warm_up``: for a model that keeps state per stream,
    the stream's audio goes to the engine ahead of its windows in warm-up jobs
    (:attr:`~stream_server.core.windows.WindowJob.warm`): every ``feed_samples`` (every hop
    when 0) before its first window (after its start or a gap), and every ``feed_samples``
    between windows (none when 0), so that a due window has only the audio since the last
    feed left to compute.
    ``pcm16``: the ring buffer holds 16-bit PCM, not float32 (half the memory; live audio comes as
    16-bit PCM anyway), so windows are rounded to 16-bit steps; offline paths keep float32 and
    so the exact samples of training.
    """

    model_rate: int
    window_samples: int
    hop_samples: int
    buffer_samples: int
    labels: tuple[str, ...]
    top_k: int = 3
    smoothing: SmoothingParams = field(default_factory=SmoothingParams)
    label_map: tuple[int, ...] = ()
    gate: GateParams = field(default_factory=GateParams)
    backdate_max_s: float = 30.0
    offline: OfflineParams = field(default_factory=OfflineParams)
    #: Hand the engine warm-up jobs ahead of the windows (:attr:`WindowJob.warm`).
    warm_up: bool = False
    #: Samples between two warm-up jobs (0: every hop before a first window, none after).
    feed_samples: int = 0
    #: Keep the stream's audio as 16-bit PCM (:class:`~ring_buffer.RingBuffer`'s ``pcm16``).
    pcm16: bool = False

    def __post_init__(self) -> None:
        if self.window_samples <= 0 or self.hop_samples <= 0:
            raise ValueError("window and hop must be positive")
        if self.feed_samples < 0:
            raise ValueError("feed_samples must be >= 0")
        if self.buffer_samples < self.window_samples + self.hop_samples:
            raise ValueError("the buffer must hold at least one window plus one hop")
        if self.label_map and not all(0 <= i < len(self.labels) for i in self.label_map):
            raise ValueError("label_map must index into labels")

    @property
    def hop_s(self) -> float:
        """Seconds of stream time between two windows."""
        return self.hop_samples / self.model_rate

    @property
    def window_s(self) -> float:
        """Seconds of audio in a window."""
        return self.window_samples / self.model_rate

    def label_params(self) -> LabelParams:
        """What a :class:`~stream_server.core.labelling.Labeller` for these windows needs."""
        return LabelParams(self.smoothing, self.gate, self.hop_s, self.backdate_max_s)

    def display_probs(self, probs: np.ndarray) -> np.ndarray:
        """Model probabilities ``(model labels,)`` to ``(labels,)``, summing merged labels."""
        if not self.label_map:
            return probs
        if probs.shape != (len(self.label_map),):
            raise ValueError(f"expected {len(self.label_map)} probabilities, got {probs.shape}")
        merged = np.bincount(self.label_map, weights=probs, minlength=len(self.labels))
        return merged.astype(np.float32)


@dataclass(frozen=True)
class Scored:
    """What one scored window produced: messages to publish and segments to store.

    ``segments`` is the tail of the stream's timeline that changed, as ``(index, segment)`` with
    consecutive indices: store them and drop any stored segment after them
    (:meth:`~stream_server.serve.store.TimelineStore.write_tail`). ``probs`` are the window's
    display probabilities ``(labels,)``; ``kind`` is the gate's judgement of it.
    """

    update: GenreUpdate
    change: GenreChange | None
    segments: list[tuple[int, Segment]]
    probs: np.ndarray
    kind: int = 0


class StreamSession:
    """The per-stream pipeline state. Not thread-safe: one owner (the event loop) drives it.

    ``table`` holds the smoothing and hysteresis of the sessions scored together
    (:func:`score_batch`); ``None`` gives the session one of its own. :meth:`close` gives its
    slot back.
    """

    def __init__(
        self,
        stream_id: str,
        params: SessionParams,
        *,
        sample_rate: int,
        channels: int,
        fmt: SampleFormat,
        name: str = "",
        kind: str = "ws",
        table: SmoothingTable | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.params = params
        self.name = name or stream_id
        self.kind = kind
        self.sample_rate = sample_rate
        self.channels = channels
        self.fmt = fmt
        self.started_wall = time.time()
        self._decoder = PcmDecoder(fmt, channels)
        self._resampler = StreamingResampler(sample_rate, params.model_rate)
        self.buffer = RingBuffer(params.buffer_samples, pcm16=params.pcm16)
        self._next_end = params.window_samples
        self._next_warm = self._feed_step
        self._labeller = Labeller(params.labels, params.label_params(), table)
        self.windows_due = 0
        self.windows_skipped = 0
        self.windows_computed = 0
        self.bytes_in = 0
        self.last_update: GenreUpdate | None = None
        # Samples (at the model's rate) of stream time spent in gaps, and the buffer position of
        # the latest gap: windows ending at or before it were cut off by the gap.
        self._gap_samples = 0
        self._gap_at = -1

    # -- audio in ---------------------------------------------------------------------------

    @property
    def _feed_step(self) -> int:
        """Samples between two warm-up jobs."""
        return self.params.feed_samples or self.params.hop_samples

    @property
    def stream_time_s(self) -> float:
        """Seconds of stream time so far: audio received plus any gaps (:meth:`mark_gap`)."""
        return (self.buffer.written + self._gap_samples) / self.params.model_rate

    def feed(self, data: bytes, arrival: float | None = None) -> WindowJob | None:
        """Add PCM bytes; return the newest window that became due, if any.

        ``arrival`` is the ``time.monotonic()`` at which ``data`` arrived (default: now).
        """
        self.bytes_in += len(data)
        mono = self._decoder.decode(data)
        if mono.size:
            self.buffer.write(self._resampler.process(mono))
        return self._due_window(time.monotonic() if arrival is None else arrival)

    def feed_samples(self, samples: np.ndarray, arrival: float | None = None) -> WindowJob | None:
        """Add mono float32 samples already at the model's rate, shape ``(n,)`` (no decoding or
        resampling); return the newest window that became due, if any."""
        self.bytes_in += samples.nbytes
        if samples.size:
            self.buffer.write(samples)
        return self._due_window(time.monotonic() if arrival is None else arrival)

    def finish(self, arrival: float | None = None) -> WindowJob | None:
        """The stream ended: flush the resampler's held-back tail; return a window it completed."""
        tail = self._resampler.flush()
        if tail.size:
            self.buffer.write(tail)
        return self._due_window(time.monotonic() if arrival is None else arrival)

    def _due_window(self, arrival: float) -> WindowJob | None:
        written = self.buffer.written
        if written < self._next_end:
            return self._warm_job(written, arrival) if self.params.warm_up else None
        hop = self.params.hop_samples
        due = (written - self._next_end) // hop + 1
        end = self._next_end + (due - 1) * hop
        self.windows_due += due
        self.windows_skipped += due - 1
        self._next_end = end + hop
        self._next_warm = end + self._feed_step
        start = end - self.params.window_samples
        window = self.buffer.read(start, self.params.window_samples)
        self.buffer.consume(self._next_end - self.params.window_samples)
        return WindowJob(self.stream_id, window, end, arrival, since=max(0, self._gap_at))

    def _warm_job(self, written: int, arrival: float) -> WindowJob | None:
        """The warm-up job due at the latest feed boundary before the next window; ``None``
        when none is due. Before the first window after the stream's start or its latest gap it
        holds all the audio since then; between windows, the audio since the previous window's
        end (the engine's stream state has at least that, unless it dropped the window: then
        the stream starts afresh there, see ``InferenceRunner.catch_up_samples``)."""
        since = max(0, self._gap_at)
        first = self._next_end == since + self.params.window_samples
        step = self._feed_step
        if written < self._next_warm or not (first or self.params.feed_samples):
            return None
        end = self._next_warm + (written - self._next_warm) // step * step
        self._next_warm = end + step
        start = since if first else self._next_end - self.params.hop_samples
        window = self.buffer.read(start, end - start)
        return WindowJob(self.stream_id, window, end, arrival, since=since, warm=True)

    def mark_gap(self, gap_s: float) -> list[tuple[int, Segment]]:
        """The source was away for ``gap_s`` seconds and is back; call before its new audio.

        Closes the open timeline segment at the current stream time, advances stream time by
        ``gap_s``, restarts windowing so that the next window holds only new audio (a full
        ``window`` after the gap), and resets the probability smoothing. Results for windows
        computed before the gap that arrive later are stale (:meth:`is_stale`).

        Returns:
            The segments to store (the one the gap closed), as in :attr:`Scored.segments`.
        """
        if not math.isfinite(gap_s) or gap_s < 0:
            raise ValueError(f"gap_s must be a finite number of seconds >= 0, got {gap_s!r}")
        tail = self._resampler.flush()
        if tail.size:
            self.buffer.write(tail)
        out = self._labeller.mark_gap(self.stream_time_s)
        written = self.buffer.written
        self._gap_samples += round(gap_s * self.params.model_rate)
        self._gap_at = written
        self._next_end = written + self.params.window_samples
        self._next_warm = written + self._feed_step
        self.buffer.consume(written)
        return out

    def is_stale(self, job: WindowJob) -> bool:
        """Whether ``job`` was cut off by a later gap (its scores must be dropped)."""
        return job.end_sample <= self._gap_at

    def skipped(self, count: int = 1) -> None:
        """Count windows that were due but dropped before inference (engine behind)."""
        self.windows_skipped += count

    # -- scores in, messages out ------------------------------------------------------------

    def on_scores(
        self,
        job: WindowJob,
        probs: np.ndarray,
        now: float | None = None,
        *,
        level_dbfs: float | None = None,
        speech_prob: float = 0.0,
    ) -> Scored:
        """Turn the model's ``(model labels,)`` probabilities for ``job`` into messages, segments.

        ``now`` is ``time.monotonic()`` when the update is about to be sent (for latency).
        ``level_dbfs`` (the level of the window's newest hop; ``None``: not measured) and
        ``speech_prob`` are the gate's inputs
        (:class:`~stream_server.core.windows.WindowResult`).

        Raises:
            ValueError: the probabilities cannot be labelled (nothing changes then).
        """
        (out,) = score_batch([self], [job], [probs], [level_dbfs], [speech_prob], now)
        if isinstance(out, ValueError):
            raise out
        return out

    def close(self) -> None:
        """The stream is gone: give its smoothing slot back (idempotent)."""
        self._labeller.close()

    def _label_input(
        self,
        job: WindowJob,
        probs: np.ndarray,
        level_dbfs: float | None,
        speech_prob: float,
    ) -> LabelInput:
        rate = self.params.model_rate
        end = job.end_sample + self._gap_samples
        return LabelInput(
            end / rate,
            (end - self.params.window_samples) / rate,
            self.params.display_probs(probs),
            level_dbfs,
            speech_prob,
        )

    def _scored(self, job: WindowJob, window: LabelInput, step: LabelStep, now: float) -> Scored:
        """The messages and segments of one labelled window."""
        probs, smoothed = window.probs, step.smoothed
        labels = self.params.labels
        self.windows_computed += 1
        k = min(self.params.top_k, len(labels))
        order = np.argsort(-probs, kind="stable")[:k]
        top = [LabelProb(label=labels[i], prob=_round(probs[i])) for i in order]
        ranked = np.argsort(-smoothed, kind="stable")
        smooth = [LabelProb(label=labels[i], prob=_round(smoothed[i])) for i in ranked]
        wall = time.time()
        t = round(window.time_s, 3)
        update = GenreUpdate(
            type="genre.update",
            seq=0,
            stream_id=self.stream_id,
            stream_time_s=t,
            window_start_s=round(window.window_start_s, 3),
            wall_time=wall,
            top=top,
            smoothed=smooth,
            genre=step.label,
            confidence=_round(step.confidence),
            latency_ms=round(max(0.0, now - job.arrival) * 1000.0, 2),
        )
        self.last_update = update
        change_msg = None
        if step.changed:
            change_msg = GenreChange(
                type="genre.change",
                seq=0,
                stream_id=self.stream_id,
                stream_time_s=t,
                wall_time=wall,
                previous=step.previous,
                genre=step.label,
                confidence=_round(step.confidence),
            )
        return Scored(update, change_msg, step.segments, probs, step.kind)

    def segments(self) -> list[Segment]:
        """The stream's timeline so far (closed segments and the open one)."""
        return self._labeller.segments()


def _round(x: float | np.floating[Any]) -> float:
    value = float(x)
    return round(value, 4) if math.isfinite(value) else 0.0


def score_batch(
    sessions: Sequence[StreamSession],
    jobs: Sequence[WindowJob],
    probs: Sequence[np.ndarray],
    levels_dbfs: Sequence[float | None],
    speech_probs: Sequence[float],
    now: float | None = None,
) -> list[Scored | ValueError]:
    """:meth:`StreamSession.on_scores` for a batch: ``jobs[i]`` of ``sessions[i]`` with its
    ``(model labels,)`` probabilities, level and speech probability.

    The sessions share one smoothing table, which smooths and tracks the batch in one call
    (:func:`~stream_server.core.labelling.step_batch`). A window whose scores are refused comes
    back as its ``ValueError`` and changes nothing; the others go on.
    """
    sent = time.monotonic() if now is None else now
    out: list[Scored | ValueError] = [ValueError("not scored")] * len(jobs)
    rows: list[int] = []
    inputs: list[LabelInput] = []
    for i, session in enumerate(sessions):
        try:
            inputs.append(
                session._label_input(jobs[i], probs[i], levels_dbfs[i], float(speech_probs[i]))
            )
        except ValueError as exc:
            out[i] = exc
            continue
        rows.append(i)
    steps = step_batch([sessions[i]._labeller for i in rows], inputs)
    for i, window, step in zip(rows, inputs, steps, strict=True):
        out[i] = (
            step
            if isinstance(step, ValueError)
            else sessions[i]._scored(jobs[i], window, step, sent)
        )
    return out
