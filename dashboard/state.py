"""What the dashboard knows about the server's streams, built from ``/ws/updates`` messages.

:class:`DashboardState` is pure: :meth:`DashboardState.apply` takes one parsed server message
(``stream_server.messages``) and updates the streams, their latest update, recent probabilities,
genre timeline, titles and the change log. No sockets, no clocks: every time comes from the
messages (``stream_time_s`` in seconds of audio, ``wall_time`` in unix seconds).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from stream_server.core.timeline import Segment, TimelineBuilder
from stream_server.messages import GenreChange, GenreUpdate, ServerMessage, TrackChange

#: Genre changes kept in the change log (all streams together).
MAX_CHANGES = 500
#: Track titles kept per stream.
MAX_TITLES = 200
#: ``genre.update`` messages whose probabilities are kept per stream (the probability charts):
#: 10 minutes at a 1 s hop.
HISTORY_UPDATES = 600


class ProbabilityHistory:
    """A stream's recent probabilities, in fixed arrays (a ring of :data:`HISTORY_UPDATES`).

    Labels are columns in the order first seen. :meth:`recent` gives ``times`` ``(n,)`` (seconds
    of stream time), ``smoothed`` and ``raw`` ``(n, labels)`` in ``0..1``, oldest first; ``raw``
    is NaN where a window's top-k did not include the label.
    """

    def __init__(self, capacity: int = HISTORY_UPDATES) -> None:
        self.labels: list[str] = []
        self._column: dict[str, int] = {}
        self._times = np.zeros(capacity)
        self._smoothed = np.zeros((capacity, 0), np.float32)
        self._raw = np.zeros((capacity, 0), np.float32)
        self._next = 0
        self.count = 0

    def _columns(self, labels: list[str]) -> None:
        new = [label for label in dict.fromkeys(labels) if label not in self._column]
        if not new:
            return
        for label in new:
            self._column[label] = len(self.labels)
            self.labels.append(label)
        grow = np.full((len(self._times), len(new)), np.nan, np.float32)
        self._smoothed = np.concatenate([self._smoothed, np.nan_to_num(grow)], axis=1)
        self._raw = np.concatenate([self._raw, grow], axis=1)

    def add(self, t: float, smoothed: Mapping[str, float], raw: Mapping[str, float]) -> None:
        """One update at stream time ``t``: every label's smoothed probability and the
        window's top-k raw ones."""
        self._columns([*smoothed, *raw])
        i = self._next
        self._times[i] = t
        self._smoothed[i] = 0.0
        self._raw[i] = np.nan
        for label, p in smoothed.items():
            self._smoothed[i, self._column[label]] = p
        for label, p in raw.items():
            self._raw[i, self._column[label]] = p
        self._next = (i + 1) % len(self._times)
        self.count = min(self.count + 1, len(self._times))

    def recent(self, since_s: float = -math.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(times, smoothed, raw)`` of the kept updates at or after ``since_s``."""
        order = (np.arange(self.count) + self._next - self.count) % len(self._times)
        keep = order[self._times[order] >= since_s]
        return self._times[keep], self._smoothed[keep], self._raw[keep]

    def __deepcopy__(self, memo: dict[int, object]) -> ProbabilityHistory:
        twin = ProbabilityHistory.__new__(ProbabilityHistory)
        twin.__dict__ = {k: copy.copy(v) for k, v in self.__dict__.items()}
        twin._times, twin._smoothed, twin._raw = (
            self._times.copy(),
            self._smoothed.copy(),
            self._raw.copy(),
        )
        return twin


@dataclass
class StreamView:
    """One stream as seen by the dashboard.

    Attributes:
        stream_id: The server's id.
        name: Display name.
        kind: ``ws``, ``url`` or ``webrtc`` (``?`` when the start was not seen).
        state: ``live`` or ``ended``.
        started_wall: Unix seconds of ``stream.started`` (``None`` when not seen).
        ended_wall: Unix seconds of ``stream.ended``, or ``None``.
        end_reason: Reason given by ``stream.ended`` ("" while live).
        genre: Current smoothed genre (``None`` before the first update).
        confidence: Its smoothed probability, ``0..1``.
        stream_time_s: Stream time of the latest message, seconds of audio.
        latency_ms: Latency of the latest update, milliseconds.
        last_update_wall: Unix seconds of the latest update.
        updates: ``genre.update`` messages seen.
        probabilities: The server's smoothed probability of every label, best first, label to
            ``0..1``.
        titles: ``(stream_time_s, title)`` announced by the source, oldest first.
        history: The recent smoothed and raw probabilities (:class:`ProbabilityHistory`).
    """

    stream_id: str
    name: str = ""
    kind: str = "?"
    state: str = "live"
    started_wall: float | None = None
    ended_wall: float | None = None
    end_reason: str = ""
    genre: str | None = None
    confidence: float = 0.0
    stream_time_s: float = 0.0
    latency_ms: float | None = None
    last_update_wall: float | None = None
    updates: int = 0
    probabilities: dict[str, float] = field(default_factory=dict)
    titles: list[tuple[float, str]] = field(default_factory=list)
    timeline: TimelineBuilder = field(default_factory=TimelineBuilder, repr=False)
    history: ProbabilityHistory = field(default_factory=ProbabilityHistory, repr=False)

    @property
    def title(self) -> str:
        """The latest announced title, or ""."""
        return self.titles[-1][1] if self.titles else ""

    def segments(self) -> list[Segment]:
        """The genre timeline seen so far (seconds of stream time)."""
        return self.timeline.segments()


@dataclass(frozen=True)
class ChangeEntry:
    """One genre change: ``previous`` (None for a stream's first genre) to ``genre``."""

    seq: int
    stream_id: str
    stream_time_s: float
    wall_time: float
    previous: str | None
    genre: str
    confidence: float


class DashboardState:
    """Streams, latest updates, timelines and the change log, from server messages.

    Messages are applied in ``seq`` order; one whose ``seq`` is not above the last applied one is
    a duplicate and ignored -- except the first message after :meth:`reconnected`, whose smaller
    ``seq`` means the server restarted (its numbering began again). ``error`` messages are kept
    in :attr:`last_error`; unknown message types are ignored.
    """

    def __init__(self) -> None:
        self.streams: dict[str, StreamView] = {}
        self.changes: deque[ChangeEntry] = deque(maxlen=MAX_CHANGES)
        self.last_seq: int | None = None
        self.last_error: str = ""
        self.messages: int = 0
        self._fresh_connection = False

    def reconnected(self) -> None:
        """A new ``/ws/updates`` connection starts; see the class docstring."""
        self._fresh_connection = True

    def apply(self, message: ServerMessage | Mapping[str, Any]) -> bool:
        """Update the state with one message; returns ``False`` when it was ignored."""
        message = cast(Mapping[str, Any], message)
        kind = message.get("type")
        if kind == "error":
            self.last_error = f"{message.get('code', '')}: {message.get('message', '')}"
            return True
        seq = message.get("seq")
        if not isinstance(seq, int) or not isinstance(message.get("stream_id"), str):
            return False
        fresh, self._fresh_connection = self._fresh_connection, False
        if self.last_seq is not None and seq <= self.last_seq:
            if not fresh:
                return False
            self._server_restarted()
        handled = self._dispatch(message)
        if handled:
            self.last_seq = seq
            self.messages += 1
        return handled

    def _server_restarted(self) -> None:
        for view in self.streams.values():
            if view.state == "live":
                view.state = "ended"
                view.end_reason = "server restarted"
        self.last_seq = None

    def _view(self, stream_id: str) -> StreamView:
        view = self.streams.get(stream_id)
        if view is None:
            view = self.streams[stream_id] = StreamView(stream_id=stream_id, name=stream_id)
        return view

    def _dispatch(self, m: Mapping[str, Any]) -> bool:
        kind = m.get("type")
        try:
            if kind == "stream.started":
                view = self._view(m["stream_id"])
                view.name = str(m.get("name") or m["stream_id"])
                view.kind = str(m.get("kind", "?"))
                view.started_wall = float(m["wall_time"])
                view.state = "live"
            elif kind == "genre.update":
                self._update(m)  # type: ignore[arg-type]
            elif kind == "genre.change":
                self._change(m)  # type: ignore[arg-type]
            elif kind == "track.change":
                self._title(m)  # type: ignore[arg-type]
            elif kind == "stream.ended":
                view = self._view(m["stream_id"])
                view.state = "ended"
                view.ended_wall = float(m["wall_time"])
                view.end_reason = str(m.get("reason", ""))
                view.stream_time_s = max(view.stream_time_s, float(m["stream_time_s"]))
            else:
                return False
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def _update(self, m: GenreUpdate) -> None:
        view = self._view(m["stream_id"])
        t = float(m["stream_time_s"])
        view.timeline.add(
            t, m["genre"], float(m["confidence"]), window_start_s=float(m["window_start_s"])
        )
        view.probabilities = {p["label"]: float(p["prob"]) for p in m["smoothed"]}
        view.history.add(t, view.probabilities, {p["label"]: float(p["prob"]) for p in m["top"]})
        view.genre = m["genre"]
        view.confidence = float(m["confidence"])
        view.stream_time_s = t
        view.latency_ms = float(m["latency_ms"])
        view.last_update_wall = float(m["wall_time"])
        view.updates += 1

    def _change(self, m: GenreChange) -> None:
        self._view(m["stream_id"])
        self.changes.append(
            ChangeEntry(
                seq=m["seq"],
                stream_id=m["stream_id"],
                stream_time_s=float(m["stream_time_s"]),
                wall_time=float(m["wall_time"]),
                previous=m.get("previous"),
                genre=m["genre"],
                confidence=float(m["confidence"]),
            )
        )

    def _title(self, m: TrackChange) -> None:
        view = self._view(m["stream_id"])
        view.titles.append((float(m["stream_time_s"]), str(m["title"])))
        del view.titles[:-MAX_TITLES]

    def changes_of(self, stream_id: str) -> list[ChangeEntry]:
        """Genre changes of one stream, oldest first."""
        return [c for c in self.changes if c.stream_id == stream_id]

    def snapshot(self) -> DashboardState:
        """A deep copy, safe to read while the original keeps changing."""
        return copy.deepcopy(self)


def merge_segments(history: list[Segment], live: list[Segment]) -> list[Segment]:
    """The stored timeline (``GET /streams/{id}/timeline``), then what the live one adds after
    its end. Times are seconds of stream time; either list may be empty.

    The stored timeline wins where both exist: it dates confirmed changes back to where they
    began, while the live one (built from ``genre.update`` messages) shows each label from when it
    was shown. A live segment that continues the last stored one's label extends it.
    """
    if not history:
        return list(live)
    out = [dataclasses.replace(s) for s in history]
    end = out[-1].end_s
    for seg in live:
        if seg.end_s <= end:
            continue
        start = max(seg.start_s, end)
        last = out[-1]
        if last.genre == seg.genre and last.end_s == start:
            last.end_s = seg.end_s
        else:
            out.append(Segment(start, seg.end_s, seg.genre, seg.confidence, seg.updates))
    return out


def recent(segments: list[Segment], minutes: float) -> list[Segment]:
    """The segments that end within the last ``minutes`` of the timeline's latest time."""
    if not segments:
        return []
    since = segments[-1].end_s - minutes * 60.0
    return [s for s in segments if s.end_s >= since]


def format_age(seconds: float | None) -> str:
    """``seconds`` as ``1h 02m``, ``3m 04s`` or ``12s``; "-" for ``None``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(int(seconds), 0)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"
