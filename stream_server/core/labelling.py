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

Labellers of many streams share one :class:`~stream_server.core.smoothing.SmoothingTable`;
:func:`step_batch` gates each window, smooths and tracks the batch's music windows in one call
to the table, then labels and stores each window.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from stream_server.core.gate import MUSIC, SILENCE, SPEECH, GateParams, judge
from stream_server.core.smoothing import SmoothingParams, SmoothingTable
from stream_server.core.timeline import Segment, TimelineBuilder
from stream_server.messages import SILENCE as SILENCE_LABEL
from stream_server.messages import SPEECH as SPEECH_LABEL

__all__ = [
    "LabelInput",
    "LabelParams",
    "LabelStep",
    "Labeller",
    "lead_split",
    "mostly_after_silence",
    "step_batch",
]

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
class LabelInput:
    """One window for a :class:`Labeller`.

    Attributes:
        time_s: Where the window ends (stream time, s).
        window_start_s: Where it starts (stream time, s).
        probs: ``(C,)`` genre probabilities of the window.
        level_dbfs: Level of its newest hop (dBFS); ``None``: not measured, not silence.
        speech_prob: Its speech probability (``0`` without a speech detector).
    """

    time_s: float
    window_start_s: float
    probs: np.ndarray
    level_dbfs: float | None = None
    speech_prob: float = 0.0


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
    """The causal label decision for one stream; see the module docstring.

    Its smoothing and hysteresis live in a slot of ``table`` (shared by the labellers of a
    batch; a table of its own when ``None``). :meth:`close` gives the slot back.
    """

    def __init__(
        self,
        labels: tuple[str, ...],
        params: LabelParams,
        table: SmoothingTable | None = None,
    ) -> None:
        """Labels for ``labels`` (the genres, in probability order) with ``params``.

        Raises:
            ValueError: no labels, or a ``table`` for another number of labels or tuning.
        """
        if not labels:
            raise ValueError("labels must not be empty")
        if table is None:
            table = SmoothingTable(len(labels), params.smoothing, capacity=1)
        elif table.num_labels != len(labels) or table.params != params.smoothing:
            raise ValueError("the smoothing table was made for other labels or tuning")
        self.labels = labels
        self.params = params
        self.table = table
        self.slot = table.acquire()
        self._closed = False
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

    def close(self) -> None:
        """Give the smoothing slot back (the stream ended); idempotent."""
        if not self._closed:
            self._closed = True
            self.table.release(self.slot)

    def step(
        self,
        time_s: float,
        window_start_s: float,
        probs: np.ndarray,
        level_dbfs: float | None = None,
        speech_prob: float = 0.0,
    ) -> LabelStep:
        """One window: it ends at ``time_s`` and starts at ``window_start_s`` (stream time, s);
        the rest as in :class:`LabelInput`.

        Raises:
            ValueError: the window's probabilities or time cannot be smoothed.
        """
        window = LabelInput(time_s, window_start_s, probs, level_dbfs, speech_prob)
        (out,) = step_batch([self], [window])
        if isinstance(out, ValueError):
            raise out
        return out

    def mark_gap(self, time_s: float) -> list[tuple[int, Segment]]:
        """The audio stopped at ``time_s`` (stream time, s) and resumes later: the open segment
        closes there and the smoothing starts afresh. Returns the timeline's changed tail."""
        self._timeline.mark_gap(time_s)
        self.table.reset_smoothing(self.slot)
        self._smoothed = None
        self._run = None
        self._history.clear()
        self._silence_until_s = None
        return self._timeline.take_changes()

    # -- one window, in two halves around the table ------------------------------------------

    def _gate(self, window: LabelInput) -> tuple[int, bool]:
        """The gate's kind for ``window`` and whether it feeds the smoothing (no state moves)."""
        level = 0.0 if window.level_dbfs is None else window.level_dbfs
        kind = int(judge(level, window.speech_prob, self.params.gate))
        fed = kind == MUSIC and not (
            self.table.current(self.slot) is not None
            and mostly_after_silence(window.window_start_s, window.time_s, self._silence_until_s)
        )
        return kind, fed

    def _finish(self, window: LabelInput, kind: int, smoothed: np.ndarray | None) -> LabelStep:
        """The rest of a window once the table smoothed it (``smoothed`` ``(C,)``; ``None``:
        not fed)."""
        params = self.params
        time_s, window_start_s, probs = window.time_s, window.window_start_s, window.probs
        fed = smoothed is not None
        if smoothed is not None:
            self._smoothed = smoothed
        if kind == SILENCE:
            self._silence_until_s = time_s
        shown_smoothed = self._smoothed if self._smoothed is not None else probs.astype(np.float32)
        past = _Past(
            time_s,
            (window_start_s + time_s) / 2,
            fed,
            probs,
            shown_smoothed,
            float(window.speech_prob),
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
            smoothed=shown_smoothed,
            kind=kind,
            previous=previous,
            changed=changed,
            since_s=since_s,
            segments=self._timeline.take_changes(),
        )

    # -- decisions ---------------------------------------------------------------------------

    def _label_of(self, kind: int) -> str:
        if kind == SPEECH:
            return SPEECH_LABEL
        if kind == SILENCE:
            return SILENCE_LABEL
        current = self.table.current(self.slot)
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


def step_batch(
    labellers: Sequence[Labeller], windows: Sequence[LabelInput]
) -> list[LabelStep | ValueError]:
    """One window for each labeller (``windows[i]`` is ``labellers[i]``'s), in order.

    All labellers share one table. Each window is gated, the music windows are smoothed and
    tracked in one :meth:`~stream_server.core.smoothing.SmoothingTable.update`, then each is
    labelled and stored. A labeller that comes back in the batch takes its later windows in
    later rounds, in order. A window the table refuses comes back as its ``ValueError`` and
    changes nothing; the others go on.
    """
    if len(labellers) != len(windows):
        raise ValueError(f"{len(labellers)} labellers for {len(windows)} windows")
    out: list[LabelStep | ValueError] = [ValueError("not labelled")] * len(windows)
    pending = list(range(len(windows)))
    while pending:
        seen: set[int] = set()
        now: list[int] = []
        later: list[int] = []
        for i in pending:
            (later if id(labellers[i]) in seen else now).append(i)
            seen.add(id(labellers[i]))
        _round(labellers, windows, now, out)
        pending = later
    return out


def _round(
    labellers: Sequence[Labeller],
    windows: Sequence[LabelInput],
    rows: list[int],
    out: list[LabelStep | ValueError],
) -> None:
    """:func:`step_batch` for ``rows``, a labeller at most once among them."""
    table = labellers[rows[0]].table
    if any(labellers[i].table is not table for i in rows):
        raise ValueError("labellers of one batch must share one smoothing table")
    kinds: dict[int, int] = {}
    fed: list[int] = []
    for i in rows:
        kind, feeds = labellers[i]._gate(windows[i])
        kinds[i] = kind
        if feeds:
            fed.append(i)
    smoothed: dict[int, np.ndarray] = {}
    if fed:
        slots = [labellers[i].slot for i in fed]
        probs = [np.asarray(windows[i].probs, dtype=np.float64) for i in fed]
        shapes = [p.shape == (table.num_labels,) for p in probs]
        times = [windows[i].time_s for i in fed]
        stacked = np.stack(
            [p if ok else np.zeros(table.num_labels) for p, ok in zip(probs, shapes, strict=True)]
        )
        problems = table.problems(slots, stacked, times)
        good = []
        for j, i in enumerate(fed):
            if not shapes[j]:
                out[i] = ValueError(
                    f"probs must have shape ({table.num_labels},), got {probs[j].shape}"
                )
            elif problems[j] is not None:
                out[i] = ValueError(problems[j])
            else:
                good.append(j)
        if good:
            step = table.update([slots[j] for j in good], stacked[good], [times[j] for j in good])
            for k, j in enumerate(good):
                smoothed[fed[j]] = step.smoothed[k]
    refused = set(fed) - set(smoothed)
    for i in rows:
        if i not in refused:
            out[i] = labellers[i]._finish(windows[i], kinds[i], smoothed.get(i))
