"""The genre timeline of a stream: contiguous segments of one genre each.

All times are seconds of stream time (audio seconds since the start of the stream). A
:class:`TimelineBuilder` consumes one ``(stream_time_s, genre, confidence)`` update per hop --
the current genre as decided by :class:`stream_server.core.smoothing.GenreTracker` -- and maintains
the segments; :func:`segments_to_csv` exports them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CSV_FIELDS",
    "Segment",
    "TimelineBuilder",
    "segments_from_json",
    "segments_to_csv",
]

#: Column order of :meth:`Segment.to_dict` and :func:`segments_to_csv`.
CSV_FIELDS: tuple[str, ...] = ("start_s", "end_s", "genre", "confidence", "updates")

_DECIMALS = 3


@dataclass
class Segment:
    """A stretch of stream time attributed to one genre.

    Attributes:
        start_s: Start, in seconds of stream time.
        end_s: End, in seconds; ``>= start_s``: the stream time of the segment's last update,
            or where the next segment was dated back to.
        genre: Genre label name.
        confidence: Mean of the per-update confidences (``0..1``) of ``genre`` in the segment.
        updates: Number of updates the segment spans (``>= 1``).
    """

    start_s: float
    end_s: float
    genre: str
    confidence: float
    updates: int

    @property
    def duration_s(self) -> float:
        """Length of the segment, in seconds of stream time."""
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form; times and confidence rounded to 3 decimals."""
        return {
            "start_s": round(self.start_s, _DECIMALS),
            "end_s": round(self.end_s, _DECIMALS),
            "genre": self.genre,
            "confidence": round(self.confidence, _DECIMALS),
            "updates": self.updates,
        }


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


class TimelineBuilder:
    """Turns per-hop genre updates into contiguous segments.

    The segments cover ``[first start, last update time]`` without overlap. A segment runs from
    where the previous one ended to the stream time of its last update; the very first segment
    (and the first after :meth:`mark_gap`) starts at the ``window_start_s`` given with its first
    update -- normally the start of the analysed window -- or at that update's own time when none
    is given. A new segment starts whenever the genre differs from the open segment's genre.

    **Dating back.** An update that changes the genre may say since when the new genre has
    really been playing (``since_s``, seconds of stream time) and which of the open segment's
    newest updates were the new genre already: the open segment then ends at ``since_s`` and
    those updates move to the new segment. The builder keeps the newest ``history`` updates of
    the open segment for this; a change cannot take more. When every update of the open segment
    moves, the open segment takes the new genre whole, and merges into the segment before it
    when that one has the same genre and no gap lies between. A segment's ``updates`` are the
    windows attributed to it, and its ``confidence`` the mean of their confidences for its
    genre.

    :meth:`take_changes` gives the segments changed since it was last called, as the tail of the
    timeline from the first changed one, so a store can rewrite exactly that tail.
    """

    def __init__(self, history: int = 0) -> None:
        """Create an empty builder keeping ``history`` (>= 0) updates of the open segment."""
        if history < 0:
            raise ValueError(f"history must be >= 0, got {history!r}")
        self._history = history
        self._closed: list[Segment] = []
        # Whether each closed segment (and the open one) starts where the previous one ended
        # because the genre changed (False: the first segment, or the first after a gap).
        self._joined: list[bool] = []
        self._open: Segment | None = None
        self._open_joined = False
        self._open_confidence_sum = 0.0
        # (stream time, confidence) of the open segment's newest updates, oldest first.
        self._recent: deque[tuple[float, float]] = deque(maxlen=history)
        # Index of the first segment changed since take_changes(), or None.
        self._dirty: int | None = None
        # Stream time (s) of the last gap: no later update may precede it, and the segment
        # opened after it does not start before it.
        self._floor_s: float | None = None

    @property
    def open_segment(self) -> Segment | None:
        """A copy of the segment still growing, or ``None``."""
        return None if self._open is None else dataclasses.replace(self._open)

    def open_times(self) -> list[float]:
        """Stream times (s) of the open segment's updates kept for dating back, oldest first.

        All of the open segment's updates when there are at most ``history`` of them.
        """
        if self._history == 0:
            return []
        return [t for t, _ in self._recent]

    def segments(self) -> list[Segment]:
        """Copies of all segments, closed ones first then the open one, in stream-time order."""
        out = [dataclasses.replace(s) for s in self._closed]
        if self._open is not None:
            out.append(dataclasses.replace(self._open))
        return out

    def take_changes(self) -> list[tuple[int, Segment]]:
        """Copies of the segments changed since the last call, as ``(index, segment)``.

        They are the tail of :meth:`segments` from the first changed one: a store that writes
        them and drops any stored segment after them holds exactly :meth:`segments`.
        """
        if self._dirty is None:
            return []
        first, self._dirty = self._dirty, None
        return list(enumerate(self.segments()))[first:]

    def _touch(self, index: int) -> None:
        self._dirty = index if self._dirty is None else min(self._dirty, index)

    def add(
        self,
        stream_time_s: float,
        genre: str,
        confidence: float,
        *,
        window_start_s: float | None = None,
        since_s: float | None = None,
        carried: Sequence[float] = (),
    ) -> Segment | None:
        """Record one update: at ``stream_time_s`` seconds, ``genre`` is current with
        ``confidence`` (``0..1``).

        ``window_start_s`` (seconds of stream time, ``<= stream_time_s``) is used only when the
        update opens a fresh timeline: the very first update, or the first after
        :meth:`mark_gap`. A fresh segment never starts before the previous segment's end or the
        gap time.

        ``since_s`` dates a change of genre back (ignored when the genre does not change, and
        when the builder keeps no history): the open segment ends at ``since_s`` (not before its
        start) and its newest ``len(carried)`` updates move to the new segment, with ``carried``
        as their confidences for the new genre (oldest first). When every update of the open
        segment moves, the open segment takes the new genre whole instead.

        Returns:
            A copy of the segment this update closed (the genre changed), else ``None``; a
            segment taken over whole by the new genre is not closed.

        Raises:
            ValueError: non-finite values, ``window_start_s`` or ``since_s`` after
                ``stream_time_s``, stream time earlier than the previous update or gap, or
                ``carried`` longer than the kept updates.
        """
        _check_finite("stream_time_s", stream_time_s)
        _check_finite("confidence", confidence)
        if window_start_s is not None:
            _check_finite("window_start_s", window_start_s)
            if window_start_s > stream_time_s:
                raise ValueError(
                    f"window_start_s ({window_start_s!r}) is after stream_time_s "
                    f"({stream_time_s!r})"
                )
        last_s = self._open.end_s if self._open is not None else self._floor_s
        if last_s is not None and stream_time_s < last_s:
            raise ValueError(
                f"stream_time_s went backwards: {stream_time_s!r} s after {last_s!r} s"
            )
        index = len(self._closed)
        if self._open is not None and self._open.genre == genre:
            self._open.end_s = float(stream_time_s)
            self._open.updates += 1
            self._open_confidence_sum += confidence
            self._open.confidence = self._open_confidence_sum / self._open.updates
            self._recent.append((float(stream_time_s), float(confidence)))
            self._touch(index)
            return None
        if self._open is not None and since_s is not None and self._history:
            return self._change_since(stream_time_s, genre, confidence, since_s, carried)

        closed = self._close()
        if closed is not None:
            start_s = closed.end_s
        else:
            start_s = float(stream_time_s if window_start_s is None else window_start_s)
            if self._floor_s is not None:
                start_s = max(start_s, self._floor_s)
        self._open_new(Segment(float(start_s), float(stream_time_s), genre, 0.0, 0), closed)
        self._extend([(float(stream_time_s), float(confidence))])
        return closed

    def _open_new(self, segment: Segment, closed: Segment | None) -> None:
        self._open = segment
        self._open_joined = closed is not None
        self._open_confidence_sum = 0.0
        self._recent.clear()
        self._touch(len(self._closed))

    def _extend(self, updates: Sequence[tuple[float, float]]) -> None:
        """Add ``(time, confidence)`` updates to the open segment (its end: the last time)."""
        assert self._open is not None
        for t, c in updates:
            self._recent.append((t, c))
            self._open_confidence_sum += c
            self._open.updates += 1
            self._open.end_s = t
        self._open.confidence = self._open_confidence_sum / max(self._open.updates, 1)

    def _change_since(
        self,
        stream_time_s: float,
        genre: str,
        confidence: float,
        since_s: float,
        carried: Sequence[float],
    ) -> Segment | None:
        """A change of genre dated back to ``since_s``; see :meth:`add`."""
        _check_finite("since_s", since_s)
        if since_s > stream_time_s:
            raise ValueError(f"since_s ({since_s!r}) is after stream_time_s ({stream_time_s!r})")
        old = self._open
        assert old is not None
        since_s = max(float(since_s), old.start_s)
        kept = list(self._recent)
        if len(carried) > len(kept):
            raise ValueError(
                f"carried has {len(carried)} confidences, more than the {len(kept)} kept updates"
            )
        moved = kept[len(kept) - len(carried) :]
        updates = [(t, float(c)) for (t, _), c in zip(moved, carried, strict=True)]
        updates.append((float(stream_time_s), float(confidence)))
        index = len(self._closed)
        if len(moved) == old.updates:
            # The whole open segment was the new genre: relabel it, merging it into the
            # segment before when that one has the same genre and touches it.
            previous = self._closed[-1] if self._closed else None
            if previous is not None and self._open_joined and previous.genre == genre:
                self._closed.pop()
                joined = self._joined.pop()
                self._open = previous
                self._open_joined = joined
                self._open_confidence_sum = previous.confidence * previous.updates
                self._recent.clear()
                self._touch(index - 1)
            else:
                self._open = Segment(old.start_s, old.start_s, genre, 0.0, 0)
                self._open_confidence_sum = 0.0
                self._recent.clear()
                self._touch(index)
            self._extend(updates)
            return None
        old_sum = self._open_confidence_sum - sum(c for _, c in moved)
        old.updates -= len(moved)
        old.confidence = old_sum / old.updates
        old.end_s = since_s
        self._touch(index)
        closed = self._close()
        assert closed is not None
        self._open_new(Segment(since_s, since_s, genre, 0.0, 0), closed)
        self._extend(updates)
        return closed

    def mark_gap(self, stream_time_s: float) -> Segment | None:
        """Close the open segment because the audio stopped (and will resume later).

        Args:
            stream_time_s: Stream time of the gap, in seconds; not earlier than the last update.
                The next segment does not start before it.

        Returns:
            A copy of the segment closed, or ``None`` when none was open.

        Raises:
            ValueError: ``stream_time_s`` not finite or earlier than the last update.
        """
        _check_finite("stream_time_s", stream_time_s)
        last_s = self._open.end_s if self._open is not None else self._floor_s
        if last_s is not None and stream_time_s < last_s:
            raise ValueError(
                f"gap at {stream_time_s!r} s is before the last update at {last_s!r} s"
            )
        if self._open is not None:
            self._touch(len(self._closed))
        closed = self._close()
        self._floor_s = float(stream_time_s)
        return closed

    def _close(self) -> Segment | None:
        """Move the open segment (if any) to the closed list; return a copy of it."""
        if self._open is None:
            return None
        closed = self._open
        self._closed.append(closed)
        self._joined.append(self._open_joined)
        self._open = None
        self._open_joined = False
        self._open_confidence_sum = 0.0
        self._recent.clear()
        return dataclasses.replace(closed)


def segments_to_csv(segments: Sequence[Segment]) -> str:
    """Render segments as CSV text with header ``start_s,end_s,genre,confidence,updates``.

    Values are rounded as in :meth:`Segment.to_dict`; lines end with ``\\n``.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for segment in segments:
        writer.writerow(segment.to_dict())
    return buf.getvalue()


def segments_from_json(rows: object) -> list[Segment]:
    """Segments from their JSON form (:meth:`Segment.to_dict`: ``GET /streams/{id}/timeline``'s
    ``segments``, a ``POST /classify`` answer's); a row that is not one is skipped."""
    out: list[Segment] = []
    if not isinstance(rows, list):
        return out
    for row in rows:
        try:
            out.append(
                Segment(
                    float(row["start_s"]),
                    float(row["end_s"]),
                    str(row["genre"]),
                    float(row["confidence"]),
                    int(row["updates"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out
