"""From each window's scores to the label shown live and the timeline stored: the causal path.

A :class:`Labeller` takes one window at a time -- its stream time, its genre probabilities
``(C,)``, its level and speech probability -- and decides, using only what came before:

1. **the gate** (:mod:`stream_server.core.gate`): the window is music, speech or silence. Only music
   windows move the genre smoothing (:class:`~stream_server.core.smoothing.ProbabilitySmoother`) and
   the hysteresis (:class:`~stream_server.core.smoothing.GenreTracker`), and not even a music window
   whose audio is mostly a silence that ended a moment ago (its features would be mostly silence);
2. **the label shown**: the tracker's genre while the shown kind is music, else ``"speech"`` or
   ``"silence"``. The shown kind changes once a run of windows of another kind spans
   ``gate.min_run_s``; shorter runs are absorbed;
3. **the stored timeline** (:class:`~stream_server.core.timeline.TimelineBuilder`): every window
   adds its label, and a confirmed change is **dated back** to where the new label took over, so the
   archive is right although the live label lags; the windows from there on move to the new
   segment:

   * a change of genre goes back to where the new genre took the lead: the window ``k`` that
     maximises the summed log-ratio ``log p(new) - log p(old)`` of the raw window probabilities
     from ``k`` to now, i.e. the split that best explains the recent windows as old-then-new.
     The boundary is put midway between the centres of window ``k`` and the one before it;
   * a change into or out of silence goes back to the start of the newest hop of the run's first
     window (silence is judged on that hop);
   * any other change of kind (music / speech) goes back midway between the centres of the run's
     first window and the one before it (speech is judged on whole windows).

   No change goes back more than ``backdate_max_s``, nor past the start of the segment it cuts.

Times are seconds of stream time; a window ending at ``t`` that started at ``s`` is centred at
``(s + t) / 2``. No I/O, no clocks: one owner drives it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from stream_server.core.gate import MUSIC, SILENCE, SPEECH, GateParams, judge
from stream_server.core.smoothing import GenreTracker, ProbabilitySmoother, SmoothingParams
from stream_server.core.timeline import Segment, TimelineBuilder
from stream_server.messages import SILENCE as SILENCE_LABEL
from stream_server.messages import SPEECH as SPEECH_LABEL

__all__ = ["LabelParams", "LabelStep", "Labeller", "lead_split", "mostly_after_silence"]

#: Added to probabilities before taking logs in :func:`lead_split`.
_EPS = 1e-6


@dataclass(frozen=True)
class LabelParams:
    """Everything a :class:`Labeller` needs besides the labels.

    Attributes:
        smoothing: Smoothing and hysteresis of the genre.
        gate: The music / speech / silence gate.
        hop_s: Seconds of stream time between two windows (silence is judged on the newest hop).
        backdate_max_s: How far back, in seconds of stream time, a confirmed change may be dated
            in the stored timeline; ``0`` stores every change where it was confirmed.
    """

    smoothing: SmoothingParams = field(default_factory=SmoothingParams)
    gate: GateParams = field(default_factory=GateParams)
    hop_s: float = 1.0
    backdate_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.hop_s) and self.hop_s > 0):
            raise ValueError(f"hop_s must be a finite number > 0, got {self.hop_s!r}")
        if not (math.isfinite(self.backdate_max_s) and self.backdate_max_s >= 0):
            raise ValueError(
                f"backdate_max_s must be a finite number >= 0, got {self.backdate_max_s!r}"
            )

    @property
    def history(self) -> int:
        """Windows kept for dating back: enough to reach ``backdate_max_s`` (0 when it is 0)."""
        if self.backdate_max_s == 0:
            return 0
        return math.ceil(self.backdate_max_s / self.hop_s) + 2


@dataclass(frozen=True)
class LabelStep:
    """What one window produced.

    Attributes:
        label: The label shown now: a genre, ``"speech"`` or ``"silence"``.
        confidence: Its confidence ``0..1``: the genre's smoothed probability, the window's
            speech probability, or 1 for silence.
        smoothed: ``(C,)`` float32, the genre smoothing's state (unchanged by windows that are
            not fed to it; the window's own probabilities before any music).
        kind: The gate's judgement of this window (:data:`~stream_server.core.gate.MUSIC`, ...).
        previous: The label shown before this window (``None`` at the first window).
        changed: Whether the label shown changed with this window (always at the first).
        since_s: Where the stored timeline dates this change back to (stream time, s), or
            ``None`` when it is stored where it was confirmed (or nothing changed).
        segments: The stored timeline's tail this window changed, as ``(index, segment)``.
    """

    label: str
    confidence: float
    smoothed: np.ndarray
    kind: int
    previous: str | None
    changed: bool
    since_s: float | None
    segments: list[tuple[int, Segment]]


@dataclass(frozen=True)
class _Past:
    """One window as remembered for dating back."""

    time_s: float
    centre_s: float
    fed: bool
    probs: np.ndarray
    smoothed: np.ndarray
    speech_prob: float


@dataclass
class _Run:
    """Consecutive windows of a kind other than the one shown; ``first`` is the oldest."""

    kind: int
    first: _Past
    before: _Past | None


def lead_split(probs: np.ndarray, old: int, new: int, fed: np.ndarray) -> int:
    """Where ``new`` took the lead from ``old`` in a run of windows.

    Args:
        probs: ``(n, C)`` window probabilities, oldest first (``n >= 1``).
        old, new: Label indices.
        fed: ``(n,)`` bool, whether each window carries genre evidence (others count 0).

    Returns:
        The index ``k`` maximising ``sum(log p[j, new] - log p[j, old] for j >= k)`` over the
        evidence windows; the latest such ``k`` on ties.
    """
    ratio = np.log(probs[:, new] + _EPS) - np.log(probs[:, old] + _EPS)
    ratio = np.where(fed, ratio, 0.0)
    suffix = np.cumsum(ratio[::-1])[::-1]
    best = np.flatnonzero(suffix >= suffix.max() - 1e-12)
    return int(best[-1])


def mostly_after_silence(
    window_start_s: float, time_s: float, silence_until_s: float | None
) -> bool:
    """Whether more than half of the window ``[window_start_s, time_s]`` lies before
    ``silence_until_s`` (the end of the latest silent hop): its audio is mostly that silence."""
    if silence_until_s is None:
        return False
    return silence_until_s - window_start_s > (time_s - window_start_s) / 2


class Labeller:
    """The causal label decision for one stream; see the module docstring."""

    def __init__(self, labels: tuple[str, ...], params: LabelParams) -> None:
        """Labels for ``labels`` (the genres, in probability order) with ``params``."""
        if not labels:
            raise ValueError("labels must not be empty")
        self.labels = labels
        self.params = params
        self._smoother = ProbabilitySmoother(len(labels), params.smoothing.time_constant_s)
        self._tracker = GenreTracker(params.smoothing)
        self._timeline = TimelineBuilder(params.history)
        # One more than the timeline keeps: this window as well as the open segment's.
        self._history: deque[_Past] = deque(maxlen=params.history + 1)
        self._smoothed: np.ndarray | None = None
        self._shown: int | None = None
        self._label: str | None = None
        self._run: _Run | None = None
        self._silence_until_s: float | None = None

    @property
    def label(self) -> str | None:
        """The label shown now (``None`` before the first window)."""
        return self._label

    def segments(self) -> list[Segment]:
        """The stored timeline so far."""
        return self._timeline.segments()

    def step(
        self,
        time_s: float,
        window_start_s: float,
        probs: np.ndarray,
        level_dbfs: float | None = None,
        speech_prob: float = 0.0,
    ) -> LabelStep:
        """One window: it ends at ``time_s`` and starts at ``window_start_s`` (stream time, s).

        Args:
            probs: ``(C,)`` genre probabilities of the window.
            level_dbfs: Level of the window's newest hop (dBFS); ``None``: not measured, not
                silence.
            speech_prob: The window's speech probability (``0`` without a speech detector).
        """
        params = self.params
        level = 0.0 if level_dbfs is None else level_dbfs
        kind = int(judge(level, speech_prob, params.gate))
        fed = kind == MUSIC and not (
            self._tracker.current is not None
            and mostly_after_silence(window_start_s, time_s, self._silence_until_s)
        )
        if fed:
            self._smoothed = self._smoother.update(probs, time_s)
            self._tracker.update(self._smoothed, time_s)
        if kind == SILENCE:
            self._silence_until_s = time_s
        smoothed = self._smoothed if self._smoothed is not None else probs.astype(np.float32)
        past = _Past(
            time_s, (window_start_s + time_s) / 2, fed, probs, smoothed, float(speech_prob)
        )
        before = self._history[-1] if self._history else None
        self._history.append(past)

        previous_kind = self._shown
        run: _Run | None = None
        if self._shown is None:
            self._shown = kind
        elif kind == self._shown:
            self._run = None
        else:
            if self._run is None or self._run.kind != kind:
                self._run = _Run(kind, past, before)
            if time_s - self._run.first.time_s >= params.gate.min_run_s:
                run, self._run = self._run, None
                self._shown = kind

        label = self._label_of(self._shown)
        confidence = self._confidence_of(label, past)
        previous = self._label
        changed = label != previous
        self._label = label
        since_s: float | None = None
        carried: list[float] = []
        if changed and previous is not None and params.history:
            since_s, moved = self._dating(previous_kind, run, previous, label, time_s)
            carried = [self._confidence_of(label, p) for p in moved]
        self._timeline.add(
            time_s,
            label,
            confidence,
            window_start_s=window_start_s,
            since_s=since_s,
            carried=carried,
        )
        return LabelStep(
            label=label,
            confidence=confidence,
            smoothed=smoothed,
            kind=kind,
            previous=previous,
            changed=changed,
            since_s=since_s,
            segments=self._timeline.take_changes(),
        )

    def mark_gap(self, time_s: float) -> list[tuple[int, Segment]]:
        """The audio stopped at ``time_s`` (stream time, s) and resumes later: the open segment
        closes there and the smoothing starts afresh. Returns the timeline's changed tail."""
        self._timeline.mark_gap(time_s)
        self._smoother.reset()
        self._smoothed = None
        self._run = None
        self._history.clear()
        self._silence_until_s = None
        return self._timeline.take_changes()

    # -- decisions ---------------------------------------------------------------------------

    def _label_of(self, kind: int) -> str:
        if kind == SPEECH:
            return SPEECH_LABEL
        if kind == SILENCE:
            return SILENCE_LABEL
        current = self._tracker.current
        assert current is not None  # music shows only once a music window was fed
        return self.labels[current]

    def _confidence_of(self, label: str, past: _Past) -> float:
        """``label``'s confidence at the window ``past``."""
        if label == SPEECH_LABEL:
            return past.speech_prob
        if label == SILENCE_LABEL:
            return 1.0
        return float(past.smoothed[self.labels.index(label)])

    def _dating(
        self,
        previous_kind: int | None,
        run: _Run | None,
        old: str,
        new: str,
        time_s: float,
    ) -> tuple[float | None, list[_Past]]:
        """Where the stored timeline dates this change back to, and the open segment's windows
        that move to the new label (oldest first)."""
        segment = self._timeline.open_segment
        if segment is None:  # a gap closed it: the change opens a fresh segment
            return None, []
        kept = len(self._timeline.open_times())
        entries = list(self._history)[-kept - 1 : -1] if kept else []
        earliest = time_s - self.params.backdate_max_s
        if run is not None and previous_kind is not None:
            moved = [p for p in entries if p.time_s >= max(run.first.time_s, earliest)]
            since_s = self._kind_boundary(previous_kind, run)
        else:
            if old not in self.labels or new not in self.labels:
                return None, []
            candidates = [p for p in entries if p.time_s >= earliest]
            first = len(entries) - len(candidates)
            candidates.append(self._history[-1])
            k = lead_split(
                np.stack([p.probs for p in candidates]),
                self.labels.index(old),
                self.labels.index(new),
                np.array([p.fed for p in candidates]),
            )
            moved = candidates[k:-1]
            if first + k > 0:
                since_s = (entries[first + k - 1].centre_s + candidates[k].centre_s) / 2
            elif kept == segment.updates:  # every window of the segment moves: all of it
                since_s = segment.start_s
            else:  # the segment holds older windows not kept here: start at the first moved one
                since_s = candidates[k].centre_s - self.params.hop_s / 2
        since_s = min(max(since_s, earliest, segment.start_s), time_s)
        return since_s, moved

    def _kind_boundary(self, previous_kind: int, run: _Run) -> float:
        """Where a change of kind confirmed by ``run`` began (stream time, s)."""
        first = run.first
        if SILENCE in (previous_kind, run.kind):
            return first.time_s - self.params.hop_s
        if run.before is not None:
            return (run.before.centre_s + first.centre_s) / 2
        return first.centre_s - self.params.hop_s / 2
