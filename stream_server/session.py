"""One live stream as a state object with no I/O: PCM in, due windows out, scores in, messages out.

:meth:`StreamSession.feed` takes raw PCM bytes, normalises them to mono float32 at the model's
rate, writes them to the stream's :class:`~ring_buffer.RingBuffer` and returns the window that is
due, if any. Windows end every ``hop`` samples once a full ``window`` has arrived; when one feed
completes several windows only the newest is returned (latest wins) and the rest are counted as
skipped. :meth:`StreamSession.on_scores` takes the model's probabilities for a window and returns
the messages to publish (``genre.update``, and ``genre.change`` when the smoothed genre changes)
plus the timeline segments to store. Sample positions are absolute indices at the model's rate.

:meth:`StreamSession.mark_gap` records that the source went away for a while (a pulled stream
reconnecting): the open timeline segment is closed, stream time jumps forward by the length of
the gap, and no window straddles it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ring_buffer import RingBuffer
from stream_server.audio import PcmDecoder, SampleFormat, StreamingResampler
from stream_server.config import Config
from stream_server.engine import WindowJob
from stream_server.messages import GenreChange, GenreUpdate, LabelProb
from stream_server.model import LoadedModel
from stream_server.smoothing import GenreTracker, ProbabilitySmoother, SmoothingParams
from stream_server.timeline import Segment, TimelineBuilder


@dataclass(frozen=True)
class SessionParams:
    """Windowing and labels for one stream. Rates in Hz, lengths in samples at ``model_rate``.

    ``labels`` are the displayed genres. ``label_map`` maps each model output index to its index
    in ``labels`` when several model labels are merged into one; empty means one to one.
    """

    model_rate: int
    window_samples: int
    hop_samples: int
    buffer_samples: int
    labels: tuple[str, ...]
    top_k: int = 3
    smoothing: SmoothingParams = field(default_factory=SmoothingParams)
    label_map: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.window_samples <= 0 or self.hop_samples <= 0:
            raise ValueError("window and hop must be positive")
        if self.buffer_samples < self.window_samples + self.hop_samples:
            raise ValueError("the buffer must hold at least one window plus one hop")
        if self.label_map and not all(0 <= i < len(self.labels) for i in self.label_map):
            raise ValueError("label_map must index into labels")

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
    """What one scored window produced: messages to publish and segments to store."""

    update: GenreUpdate
    change: GenreChange | None
    segments: list[tuple[int, Segment]]
    probs: np.ndarray


def window_seconds(config: Config, model: LoadedModel) -> float:
    """Window length in seconds: ``engine.window_s`` if set, else the model's own."""
    return config.engine.window_s or model.preprocessing.window_seconds


def session_params(config: Config, model: LoadedModel) -> SessionParams:
    """Windowing, labels and smoothing for ``model`` under ``config``."""
    pre, eng, sm = model.preprocessing, config.engine, config.smoothing
    rate = pre.sample_rate
    window = round(window_seconds(config, model) * rate)
    hop = round(eng.hop_s * rate)
    display = [config.model.labels.get(label, label) for label in model.labels]
    labels = tuple(dict.fromkeys(display))  # merged labels appear once, in first-seen order
    return SessionParams(
        model_rate=rate,
        window_samples=window,
        hop_samples=hop,
        buffer_samples=max(round(eng.buffer_s * rate), window + hop),
        labels=labels,
        top_k=eng.top_k,
        smoothing=SmoothingParams(sm.time_constant_s, sm.switch_margin, sm.min_dwell_s),
        label_map=tuple(labels.index(d) for d in display) if len(labels) < len(display) else (),
    )


class StreamSession:
    """The per-stream pipeline state. Not thread-safe: one owner (the event loop) drives it."""

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
        self.buffer = RingBuffer(params.buffer_samples)
        self._next_end = params.window_samples
        self._smoother = ProbabilitySmoother(len(params.labels), params.smoothing.time_constant_s)
        self._tracker = GenreTracker(params.smoothing)
        self._timeline = TimelineBuilder()
        self._closed_segments = 0
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

    def finish(self, arrival: float | None = None) -> WindowJob | None:
        """The stream ended: flush the resampler's held-back tail; return a window it completed."""
        tail = self._resampler.flush()
        if tail.size:
            self.buffer.write(tail)
        return self._due_window(time.monotonic() if arrival is None else arrival)

    def _due_window(self, arrival: float) -> WindowJob | None:
        written = self.buffer.written
        if written < self._next_end:
            return None
        hop = self.params.hop_samples
        due = (written - self._next_end) // hop + 1
        end = self._next_end + (due - 1) * hop
        self.windows_due += due
        self.windows_skipped += due - 1
        self._next_end = end + hop
        start = end - self.params.window_samples
        window = self.buffer.read(start, self.params.window_samples)
        self.buffer.consume(self._next_end - self.params.window_samples)
        return WindowJob(self.stream_id, window, end, arrival)

    def mark_gap(self, gap_s: float) -> list[tuple[int, Segment]]:
        """The source was away for ``gap_s`` seconds and is back; call before its new audio.

        Closes the open timeline segment at the current stream time, advances stream time by
        ``gap_s``, restarts windowing so that the next window holds only new audio (a full
        ``window`` after the gap), and resets the probability smoothing. Results for windows
        computed before the gap that arrive later are stale (:meth:`is_stale`).

        Returns:
            The segments to store: the one the gap closed, as ``(index, segment)``.
        """
        if not math.isfinite(gap_s) or gap_s < 0:
            raise ValueError(f"gap_s must be a finite number of seconds >= 0, got {gap_s!r}")
        tail = self._resampler.flush()
        if tail.size:
            self.buffer.write(tail)
        out: list[tuple[int, Segment]] = []
        closed = self._timeline.mark_gap(self.stream_time_s)
        if closed is not None:
            out.append((self._closed_segments, closed))
            self._closed_segments += 1
        written = self.buffer.written
        self._gap_samples += round(gap_s * self.params.model_rate)
        self._gap_at = written
        self._next_end = written + self.params.window_samples
        self.buffer.consume(written)
        self._smoother.reset()
        return out

    def is_stale(self, job: WindowJob) -> bool:
        """Whether ``job`` was cut off by a later gap (its scores must be dropped)."""
        return job.end_sample <= self._gap_at

    def skipped(self, count: int = 1) -> None:
        """Count windows that were due but dropped before inference (engine behind)."""
        self.windows_skipped += count

    # -- scores in, messages out ------------------------------------------------------------

    def on_scores(self, job: WindowJob, probs: np.ndarray, now: float | None = None) -> Scored:
        """Turn the model's ``(model labels,)`` probabilities for ``job`` into messages, segments.

        ``now`` is ``time.monotonic()`` when the update is about to be sent (for latency).
        """
        probs = self.params.display_probs(probs)
        rate = self.params.model_rate
        t = (job.end_sample + self._gap_samples) / rate
        window_start = (job.end_sample + self._gap_samples - self.params.window_samples) / rate
        smoothed = self._smoother.update(probs, t)
        change = self._tracker.update(smoothed, t)
        current = self._tracker.current
        assert current is not None  # set by the first update
        genre = self.params.labels[current]
        confidence = float(smoothed[current])
        self.windows_computed += 1

        segments: list[tuple[int, Segment]] = []
        closed = self._timeline.add(t, genre, confidence, window_start_s=window_start)
        if closed is not None:
            segments.append((self._closed_segments, closed))
            self._closed_segments += 1
        open_segment = self._timeline.open_segment
        if open_segment is not None:
            segments.append((self._closed_segments, open_segment))

        k = min(self.params.top_k, len(self.params.labels))
        order = np.argsort(-probs, kind="stable")[:k]
        top = [LabelProb(label=self.params.labels[i], prob=_round(probs[i])) for i in order]
        ranked = np.argsort(-smoothed, kind="stable")
        smooth = [LabelProb(label=self.params.labels[i], prob=_round(smoothed[i])) for i in ranked]
        sent = time.monotonic() if now is None else now
        wall = time.time()
        update = GenreUpdate(
            type="genre.update",
            seq=0,
            stream_id=self.stream_id,
            stream_time_s=round(t, 3),
            window_start_s=round(window_start, 3),
            wall_time=wall,
            top=top,
            smoothed=smooth,
            genre=genre,
            confidence=_round(confidence),
            latency_ms=round(max(0.0, sent - job.arrival) * 1000.0, 2),
        )
        self.last_update = update
        change_msg = None
        if change is not None:
            change_msg = GenreChange(
                type="genre.change",
                seq=0,
                stream_id=self.stream_id,
                stream_time_s=round(change.stream_time_s, 3),
                wall_time=wall,
                previous=None if change.previous is None else self.params.labels[change.previous],
                genre=self.params.labels[change.current],
                confidence=_round(change.confidence),
            )
        return Scored(update, change_msg, segments, probs)

    def segments(self) -> list[Segment]:
        """The stream's timeline so far (closed segments and the open one)."""
        return self._timeline.segments()


def _round(x: float | np.floating[Any]) -> float:
    value = float(x)
    return round(value, 4) if math.isfinite(value) else 0.0
